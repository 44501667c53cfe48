//! `strom`: broker and command-line tools in one binary.

mod admin;
mod console;
mod describe;
mod elect;
mod groups;
mod output;
mod perf;
mod reassign;
mod server;
mod storage;
mod transactions;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "strom",
    version,
    about = "A Kafka-compatible distributed commit log"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a broker.
    ///
    /// With no arguments: a single-node cluster, node 0, listening and advertised on
    /// 127.0.0.1:9092, data in ./strom-data.
    ///
    /// Examples:
    ///   strom server
    ///   strom server --config server.properties
    ///   strom server --override listeners=PLAINTEXT://0.0.0.0:9092 --override log.dirs=/var/lib/strom
    #[command(verbatim_doc_comment)]
    Server(server::ServerArgs),
    /// Create, list, describe, alter and delete topics.
    #[command(subcommand)]
    Topics(admin::TopicsCmd),
    /// Describe and change topic and broker configs.
    #[command(subcommand)]
    Configs(admin::ConfigsCmd),
    /// Produce records read line by line from standard input or a file.
    ///
    /// Example: printf 'k1:v1\nk2:v2\n' | strom produce --topic orders --key-separator :
    Produce(console::ProduceArgs),
    /// Consume records and print them.
    ///
    /// Example: strom consume --topic orders --from-beginning --format '{partition}/{offset} {key}={value}'
    Consume(console::ConsumeArgs),
    /// List, describe, delete consumer groups and reset their offsets.
    #[command(subcommand)]
    Groups(groups::GroupsCmd),
    /// Performance tests: produce or consume at full speed, with throughput and latency.
    #[command(subcommand)]
    Perf(perf::PerfCmd),
    /// List and describe transactions, the producers of a partition, and find and abort
    /// hanging transactions (what kafka-transactions.sh does).
    #[command(subcommand)]
    Transactions(transactions::TransactionsCmd),
    /// Describe the cluster: id, controller, brokers.
    #[command(subcommand)]
    Cluster(admin::ClusterCmd),
    /// Prepare data directories for a cluster node: make a cluster id, format directories.
    #[command(subcommand)]
    Storage(storage::StorageCmd),
}

fn run_client<F: std::future::Future<Output = anyhow::Result<()>>>(f: F) -> anyhow::Result<()> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(f)
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    if !matches!(cli.command, Command::Server(_)) {
        // A client command piped into `head` stops quietly when the reader goes away, as
        // Kafka's shell tools do; the server keeps ignoring SIGPIPE (a client's closed
        // socket is an error to handle, not a reason to exit).
        // SAFETY: called before any thread starts; SIG_DFL is a valid disposition.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("STROM_LOG")
                // openraft narrates every election at info, and repeats an unreachable
                // voter several times a second: the quorum's transport says it once.
                .unwrap_or_else(|_| {
                    "info,openraft=warn,openraft::replication=off,openraft::engine::handler::replication_handler=off"
                        .into()
                }),
        )
        .with_writer(std::io::stderr)
        .init();
    let result = match cli.command {
        Command::Server(args) => server::run(args),
        Command::Topics(cmd) => run_client(admin::topics(cmd)),
        Command::Configs(cmd) => run_client(admin::configs(cmd)),
        Command::Cluster(cmd) => run_client(admin::cluster(cmd)),
        Command::Storage(cmd) => storage::storage(cmd),
        // Two workers, as the clients it is compared with have an I/O thread beside the
        // application's: batches are closed and sent while the next records are added.
        Command::Perf(cmd) => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .map_err(anyhow::Error::from)
            .and_then(|rt| rt.block_on(perf::perf(cmd))),
        Command::Groups(cmd) => run_client(groups::groups(cmd)),
        Command::Transactions(cmd) => run_client(transactions::transactions(cmd)),
        Command::Produce(args) => run_client(console::produce(args)),
        Command::Consume(args) => run_client(console::consume(args)),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
