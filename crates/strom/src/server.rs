use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use strom_broker::{Broker, BrokerConfig, parse_properties};

#[derive(clap::Args)]
pub struct ServerArgs {
    /// A Kafka-style server.properties file (Kafka's key names).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Set one key, over the file's value; repeatable.
    #[arg(long = "override", value_name = "KEY=VALUE")]
    overrides: Vec<String>,
}

use strom_storage::clock::now_ms;

fn load_config(args: &ServerArgs) -> anyhow::Result<BrokerConfig> {
    let mut props = BTreeMap::new();
    if let Some(path) = &args.config {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the config file {}", path.display()))?;
        props = parse_properties(&text, &path.display().to_string())?;
    }
    for o in &args.overrides {
        let Some((k, v)) = o.split_once('=') else {
            bail!("--override {o:?} is not KEY=VALUE");
        };
        props.insert(k.trim().to_string(), v.trim().to_string());
    }
    let (config, warnings) = BrokerConfig::from_properties(&props)?;
    for w in warnings {
        tracing::warn!("{w}");
    }
    Ok(config)
}

pub fn run(args: ServerArgs) -> anyhow::Result<()> {
    limit_malloc_arenas();
    let config = load_config(&args)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(serve(config))
}

/// glibc gives threads that allocate at the same time arenas of their own, up to eight
/// per core, and memory freed in one arena serves no other: a start that opened tens of
/// thousands of partitions on several threads left a fifth more resident memory than
/// creating the same partitions did. As many arenas as cores (at least two) keep that
/// down; `MALLOC_ARENA_MAX`, when set, still decides.
fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        let arenas = std::thread::available_parallelism().map_or(2, |n| n.get().max(2));
        // SAFETY: mallopt takes no pointer; called before the runtime starts its threads.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, arenas.min(i32::MAX as usize) as i32);
        }
    }
}

/// `process.roles=controller`: the quorum and the active controller, no broker listener.
async fn serve_controller(config: BrokerConfig) -> anyhow::Result<()> {
    let signal = ShutdownSignal::install()?;
    let node = strom_broker::quorum_node::ControllerNode::start(&config)
        .await
        .with_context(|| {
            format!(
                "cannot start the controller in {}",
                config.log_dir.display()
            )
        })?;
    let l = config
        .kraft
        .controller_listener
        .as_ref()
        .map(|l| format!("{}:{}", l.host, l.port))
        .unwrap_or_default();
    println!(
        "strom controller {} listening on {l}, cluster {}, data in {}",
        config.node_id,
        node.cluster_id,
        std::fs::canonicalize(&config.log_dir)
            .unwrap_or(config.log_dir.clone())
            .display()
    );
    signal.wait().await;
    tracing::info!("shutting down");
    node.quorum.shutdown().await;
    tracing::info!("clean shutdown complete");
    Ok(())
}

/// Raises the open files limit to its hard limit, as far as allowed, and keeps segment
/// files within three quarters of it (the rest for connections and the other files): a
/// broker with more partitions than that closes the least recently used segment files.
fn budget_open_files() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit on a struct this function owns.
    let soft = unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return;
        }
        let raised = libc::rlimit {
            rlim_cur: limit.rlim_max,
            rlim_max: limit.rlim_max,
        };
        if limit.rlim_cur < limit.rlim_max && libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
            limit.rlim_max
        } else {
            limit.rlim_cur
        }
    };
    let budget = (soft as usize).saturating_mul(3) / 4;
    strom_storage::open_files::set_budget(budget);
    tracing::info!(
        open_files_limit = soft,
        segment_files = budget,
        "segment files kept open within the open files limit"
    );
}

async fn serve(config: BrokerConfig) -> anyhow::Result<()> {
    if !config.kraft.roles.broker {
        return serve_controller(config).await;
    }
    budget_open_files();
    let signal = ShutdownSignal::install()?;
    let mut bound = Vec::new();
    for l in &config.listeners {
        let listener = tokio::net::TcpListener::bind(l.bind)
            .await
            .with_context(|| {
                format!(
                    "cannot listen on {} for {} (is another broker running there?)",
                    l.bind, l.name
                )
            })?;
        bound.push((listener, Arc::<str>::from(l.name.as_str())));
    }
    let data = config.log_dir.clone();
    if config.kraft.multi_node(config.node_id)
        && strom_broker::meta_properties::read(&config.log_dir)?.is_none()
    {
        bail!(
            "{} is not formatted, and this node's quorum has other voters: run `strom storage format -t <cluster id> -c <server.properties>` on every node with the same cluster id (make one with `strom storage random-uuid`)",
            config.log_dir.display()
        );
    }
    // The metadata log under <metadata.log.dir>/__cluster_metadata-0 holds the topics and
    // configs: a quorum of this node alone, or of controller.quorum.voters.
    let broker = Arc::new(
        Broker::join_with_quorum(config)
            .await
            .with_context(|| format!("cannot open the data directory {}", data.display()))?,
    );
    let (stop, stopped) = tokio::sync::watch::channel(false);
    // Heartbeats from the registration on: opening many partitions can take longer than the
    // session timeout, and a silent node would be fenced in the middle of its start.
    let heartbeats = tokio::spawn(broker.clone().run_heartbeats(stopped.clone()));
    let opening = broker.clone();
    tokio::task::spawn_blocking(move || opening.publish_joined())
        .await?
        .with_context(|| format!("cannot open the data directory {}", data.display()))?;
    let c = &broker.config;
    let mut listening = Vec::new();
    for ((listener, _), l) in bound.iter().zip(&c.listeners) {
        listening.push(format!(
            "{} (advertised as {}:{})",
            listener.local_addr()?,
            l.host,
            l.port
        ));
    }
    println!(
        "strom node {} listening on {}, cluster {}, data in {}",
        c.node_id,
        listening.join(", "),
        broker.cluster_id,
        std::fs::canonicalize(&c.log_dir)
            .unwrap_or(c.log_dir.clone())
            .display()
    );
    broker.start_replication();
    let maintenance = tokio::spawn(maintenance(broker.clone(), stopped.clone()));
    let follower = tokio::spawn(broker.clone().follow_metadata(stopped.clone()));
    let group_timers = tokio::spawn(broker.clone().run_group_timers(stopped.clone()));
    let txn_timers = tokio::spawn(broker.clone().run_txn_timers(stopped.clone()));
    let isr_changes = tokio::spawn(broker.clone().run_isr_changes(stopped.clone()));
    // Not awaited at shutdown: a pass in progress sees its log closed and stops there.
    if broker.config.cleaner.enable {
        for _ in 0..broker.config.cleaner.threads {
            tokio::spawn(cleaner(broker.clone(), stopped.clone()));
        }
    }
    let servers: Vec<_> = bound
        .into_iter()
        .map(|(listener, name)| {
            tokio::spawn(strom_broker::server::serve(
                broker.clone(),
                listener,
                name,
                stopped.clone(),
            ))
        })
        .collect();
    signal.wait().await;
    tracing::info!("shutting down");
    // Leadership moves away while this node still serves: clients follow it at once.
    broker
        .controlled_shutdown(Duration::from_millis(
            broker.config.kraft.session_timeout_ms.max(1_000),
        ))
        .await;
    let _ = stop.send(true);
    for server in servers {
        let _ = server.await;
    }
    let _ = maintenance.await;
    let _ = follower.await;
    let _ = group_timers.await;
    let _ = txn_timers.await;
    let _ = heartbeats.await;
    let _ = isr_changes.await;
    let b = broker.clone();
    tokio::task::spawn_blocking(move || b.shutdown()).await?;
    broker.close_metadata_log().await;
    tracing::info!("clean shutdown complete");
    Ok(())
}

/// SIGTERM and SIGINT, caught from the moment this is made: a signal sent as soon as the
/// "listening" line is printed must still run the clean shutdown, not kill the process.
struct ShutdownSignal {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl ShutdownSignal {
    fn install() -> anyhow::Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Self {
            term: signal(SignalKind::terminate()).context("cannot catch SIGTERM")?,
            int: signal(SignalKind::interrupt()).context("cannot catch SIGINT")?,
        })
    }

    async fn wait(mut self) {
        tokio::select! {
            _ = self.int.recv() => {}
            _ = self.term.recv() => {}
        }
    }
}

/// One log cleaner thread: cleans the filthiest log, again and again, and sleeps
/// `log.cleaner.backoff.ms` when none is due.
async fn cleaner(broker: Arc<Broker>, mut stop: tokio::sync::watch::Receiver<bool>) {
    let backoff = Duration::from_millis(broker.config.cleaner.backoff_ms.max(1));
    loop {
        let b = broker.clone();
        let worked = tokio::task::spawn_blocking(move || b.clean_filthiest_log(now_ms()))
            .await
            .unwrap_or(false);
        if *stop.borrow() {
            return;
        }
        if worked {
            continue;
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = stop.changed() => return,
        }
    }
}

/// Retention, time-based flushes, recovery-point checkpoints and committed-offset expiry,
/// each on its own interval.
async fn maintenance(broker: Arc<Broker>, mut stop: tokio::sync::watch::Receiver<bool>) {
    let c = &broker.config;
    let mut retention = tokio::time::interval(Duration::from_millis(
        c.log_retention_check_interval_ms.max(1),
    ));
    let mut flush = tokio::time::interval(Duration::from_millis(
        c.log_flush_scheduler_interval_ms.max(1),
    ));
    let mut checkpoint = tokio::time::interval(Duration::from_millis(
        c.log_flush_offset_checkpoint_interval_ms.max(1),
    ));
    let mut offsets = tokio::time::interval(Duration::from_millis(
        c.offsets_retention_check_interval_ms.max(1),
    ));
    let mut producers = tokio::time::interval(Duration::from_millis(
        c.producer_id_expiration_check_interval_ms.max(1),
    ));
    loop {
        let b = broker.clone();
        tokio::select! {
            _ = retention.tick() => { let _ = tokio::task::spawn_blocking(move || b.run_retention(now_ms())).await; }
            _ = flush.tick() => { let _ = tokio::task::spawn_blocking(move || b.run_flush(now_ms())).await; }
            // Then free memory goes back to the system: a start leaves a few MiB of
            // its scratch in glibc's arenas (0.45 KB per partition at 10,000).
            _ = checkpoint.tick() => { let _ = tokio::task::spawn_blocking(move || { b.run_checkpoint(); strom_broker::heap::trim(); }).await; }
            _ = producers.tick() => { let _ = tokio::task::spawn_blocking(move || b.run_producer_expiration(now_ms())).await; }
            _ = offsets.tick() => b.maintain_groups().await,
            _ = stop.changed() => return,
        }
    }
}
