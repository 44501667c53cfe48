//! `strom groups`: list, describe (with lag), delete and reset offsets of consumer groups.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::{Context, bail};
use serde_json::json;
use strom_client::admin::{EARLIEST, LATEST};

use crate::admin::Conn;
use crate::output::{Table, print_json};

#[derive(clap::Subcommand)]
pub enum GroupsCmd {
    /// List consumer groups with their state.
    ///
    /// Example: strom groups list
    List {
        #[command(flatten)]
        conn: Conn,
        #[arg(long)]
        json: bool,
    },
    /// Describe a group: members, committed offsets, log end offsets and lag per partition.
    ///
    /// Example: strom groups describe --group billing
    Describe {
        #[command(flatten)]
        conn: Conn,
        #[arg(long)]
        group: String,
        #[arg(long)]
        json: bool,
    },
    /// Delete a group that has no members, with its committed offsets.
    ///
    /// Example: strom groups delete --group billing
    Delete {
        #[command(flatten)]
        conn: Conn,
        #[arg(long)]
        group: String,
    },
    /// Move a group's committed offsets. Prints the plan; changes nothing without --execute.
    ///
    /// Examples:
    ///   strom groups reset-offsets --group billing --topic orders --to-earliest
    ///   strom groups reset-offsets --group billing --topic orders --shift-by -100 --execute
    ///   strom groups reset-offsets --group billing --topic orders --to-datetime 2026-11-22T08:00:00Z --execute
    #[command(verbatim_doc_comment)]
    ResetOffsets {
        #[command(flatten)]
        conn: Conn,
        #[arg(long)]
        group: String,
        #[arg(long)]
        topic: String,
        #[command(flatten)]
        to: ResetTo,
        /// Commit the new offsets (the group must have no active members).
        #[arg(long)]
        execute: bool,
        #[arg(long)]
        json: bool,
    },
}

#[derive(clap::Args)]
#[group(required = true, multiple = false)]
pub struct ResetTo {
    #[arg(long)]
    to_earliest: bool,
    #[arg(long)]
    to_latest: bool,
    #[arg(long, value_name = "OFFSET")]
    to_offset: Option<i64>,
    /// An ISO-8601 time: YYYY-MM-DDTHH:MM:SS[.mmm][Z|+HH:MM]
    #[arg(long, value_name = "TIME")]
    to_datetime: Option<String>,
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    shift_by: Option<i64>,
}

/// Days since 1970-01-01 of a civil date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let doy = (153 * (m + if m > 2 { -3 } else { 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146097 + doe - 719468
}

/// Milliseconds since the epoch of an ISO-8601 date-time (UTC when no zone is given).
pub fn parse_datetime(s: &str) -> anyhow::Result<i64> {
    let bad = || anyhow::anyhow!("{s:?} is not a time like 2026-11-22T08:00:00Z");
    let (date, rest) = s.split_once('T').ok_or_else(bad)?;
    let d: Vec<i64> = date
        .split('-')
        .map(|x| x.parse().map_err(|_| bad()))
        .collect::<anyhow::Result<_>>()?;
    if d.len() != 3 {
        return Err(bad());
    }
    let (time, offset_min) = if let Some(t) = rest.strip_suffix('Z') {
        (t, 0)
    } else if let Some(i) = rest.rfind(['+', '-']).filter(|i| *i >= 8) {
        let (t, z) = rest.split_at(i);
        let sign = if z.starts_with('-') { -1 } else { 1 };
        let (h, m) = z[1..].split_once(':').ok_or_else(bad)?;
        (
            t,
            sign * (h.parse::<i64>().map_err(|_| bad())? * 60
                + m.parse::<i64>().map_err(|_| bad())?),
        )
    } else {
        (rest, 0)
    };
    let (hms, millis) = match time.split_once('.') {
        Some((a, b)) => (
            a,
            format!("{b:0<3}")[..3].parse::<i64>().map_err(|_| bad())?,
        ),
        None => (time, 0),
    };
    let t: Vec<i64> = hms
        .split(':')
        .map(|x| x.parse().map_err(|_| bad()))
        .collect::<anyhow::Result<_>>()?;
    if t.len() != 3
        || !(1..=12).contains(&d[1])
        || !(1..=31).contains(&d[2])
        || t[0] > 23
        || t[1] > 59
        || t[2] > 60
    {
        return Err(bad());
    }
    let days = days_from_civil(d[0], d[1], d[2]);
    Ok(((days * 24 + t[0]) * 60 + t[1] - offset_min) * 60_000 + t[2] * 1000 + millis)
}

pub async fn groups(cmd: GroupsCmd) -> anyhow::Result<()> {
    match cmd {
        GroupsCmd::List { conn, json } => {
            let groups = conn.client().await?.list_groups().await?;
            if json {
                print_json(&json!(groups.iter().map(|g| json!({"group": g.group_id, "state": g.state, "protocol_type": g.protocol_type})).collect::<Vec<_>>()));
            } else {
                let mut t = Table::new(&["GROUP", "STATE", "PROTOCOL-TYPE"]);
                for g in groups {
                    t.row(vec![g.group_id, g.state, g.protocol_type]);
                }
                print!("{}", t.render());
            }
        }
        GroupsCmd::Describe { conn, group, json } => describe(conn, group, json).await?,
        GroupsCmd::Delete { conn, group } => {
            conn.client()
                .await?
                .delete_group(&group)
                .await
                .with_context(|| format!("cannot delete group {group}"))?;
            println!("Deleted group {group}.");
        }
        GroupsCmd::ResetOffsets {
            conn,
            group,
            topic,
            to,
            execute,
            json,
        } => reset(conn, group, topic, to, execute, json).await?,
    }
    Ok(())
}

async fn describe(conn: Conn, group: String, json: bool) -> anyhow::Result<()> {
    let client = conn.client().await?;
    let d = client
        .describe_group(&group)
        .await
        .with_context(|| format!("cannot describe group {group}"))?;
    let committed = client.committed_offsets(&group).await?;
    if d.state == "Dead" && committed.is_empty() {
        bail!("group {group} does not exist");
    }
    let mut owner: BTreeMap<(String, i32), (String, String, String)> = BTreeMap::new();
    for m in &d.members {
        for tp in &m.assignment {
            owner.insert(
                tp.clone(),
                (
                    m.member_id.clone(),
                    m.client_host.clone(),
                    m.client_id.clone(),
                ),
            );
        }
    }
    let partitions: BTreeSet<(String, i32)> =
        committed.keys().chain(owner.keys()).cloned().collect();
    let topics: BTreeSet<String> = partitions.iter().map(|(t, _)| t.clone()).collect();
    let mut ends = BTreeMap::new();
    for t in &topics {
        for (p, o) in client.list_offsets(t, LATEST).await? {
            ends.insert((t.clone(), p), o);
        }
    }
    let mut table = Table::new(&[
        "TOPIC",
        "PARTITION",
        "CURRENT-OFFSET",
        "LOG-END-OFFSET",
        "LAG",
        "CONSUMER-ID",
        "HOST",
        "CLIENT-ID",
    ]);
    let mut rows = Vec::new();
    let mut total_lag = 0i64;
    for tp in &partitions {
        let current = committed.get(tp).copied();
        let end = ends.get(tp).copied();
        let lag = match (current, end) {
            (Some(c), Some(e)) => Some((e - c).max(0)),
            _ => None,
        };
        total_lag += lag.unwrap_or(0);
        let (member, host, client_id) = owner
            .get(tp)
            .cloned()
            .unwrap_or_else(|| ("-".into(), "-".into(), "-".into()));
        let show = |v: Option<i64>| v.map(|v| v.to_string()).unwrap_or_else(|| "-".into());
        table.row(vec![
            tp.0.clone(),
            tp.1.to_string(),
            show(current),
            show(end),
            show(lag),
            member.clone(),
            host.clone(),
            client_id.clone(),
        ]);
        rows.push(json!({"topic": tp.0, "partition": tp.1, "current_offset": current, "log_end_offset": end, "lag": lag, "consumer_id": owner.get(tp).map(|o| o.0.clone())}));
    }
    if json {
        print_json(&json!({
            "group": group, "state": d.state, "protocol_type": d.protocol_type, "protocol": d.protocol,
            "members": d.members.iter().map(|m| json!({"member_id": m.member_id, "instance_id": m.instance_id, "client_id": m.client_id, "host": m.client_host,
                "assignment": m.assignment.iter().map(|(t, p)| json!({"topic": t, "partition": p})).collect::<Vec<_>>()})).collect::<Vec<_>>(),
            "offsets": rows, "total_lag": total_lag,
        }));
        return Ok(());
    }
    println!(
        "Group {group}: state {}, {} member(s){}",
        d.state,
        d.members.len(),
        if d.protocol.is_empty() {
            String::new()
        } else {
            format!(", assignor {}", d.protocol)
        }
    );
    print!("{}", table.render());
    println!("Total lag: {total_lag}");
    Ok(())
}

async fn reset(
    conn: Conn,
    group: String,
    topic: String,
    to: ResetTo,
    execute: bool,
    json: bool,
) -> anyhow::Result<()> {
    let client = conn.client().await?;
    let earliest: BTreeMap<i32, i64> = client
        .list_offsets(&topic, EARLIEST)
        .await?
        .into_iter()
        .collect();
    let latest: BTreeMap<i32, i64> = client
        .list_offsets(&topic, LATEST)
        .await?
        .into_iter()
        .collect();
    let committed = client.committed_offsets(&group).await?;
    let by_time: Option<BTreeMap<i32, i64>> = match &to.to_datetime {
        Some(s) => Some(
            client
                .list_offsets(&topic, parse_datetime(s)?)
                .await?
                .into_iter()
                .collect(),
        ),
        None => None,
    };
    let mut plan = BTreeMap::new();
    for (&p, &lo) in &earliest {
        let hi = latest[&p];
        let current = committed.get(&(topic.clone(), p)).copied();
        let target = if to.to_earliest {
            lo
        } else if to.to_latest {
            hi
        } else if let Some(o) = to.to_offset {
            o
        } else if let Some(t) = &by_time {
            // No record at or after the time: the end.
            t.get(&p).copied().filter(|o| *o >= 0).unwrap_or(hi)
        } else {
            current.unwrap_or(lo) + to.shift_by.unwrap_or(0)
        };
        plan.insert((topic.clone(), p), (current, target.clamp(lo, hi)));
    }
    if execute {
        let d = client.describe_group(&group).await?;
        if !matches!(d.state.as_str(), "Empty" | "Dead") {
            bail!(
                "group {group} is {} with {} member(s): offsets can only be reset while it has no active members; stop its consumers first",
                d.state,
                d.members.len()
            );
        }
        let offsets: BTreeMap<(String, i32), i64> =
            plan.iter().map(|(k, (_, t))| (k.clone(), *t)).collect();
        client
            .commit_offsets(&group, &offsets)
            .await
            .with_context(|| format!("cannot commit the offsets of {group}"))?;
    }
    if json {
        print_json(&json!({
            "group": group, "executed": execute,
            "partitions": plan.iter().map(|((t, p), (c, n))| json!({"topic": t, "partition": p, "current_offset": c, "new_offset": n})).collect::<Vec<_>>(),
        }));
        return Ok(());
    }
    let mut t = Table::new(&["TOPIC", "PARTITION", "CURRENT-OFFSET", "NEW-OFFSET"]);
    for ((topic, p), (c, n)) in &plan {
        t.row(vec![
            topic.clone(),
            p.to_string(),
            c.map(|c| c.to_string()).unwrap_or_else(|| "-".into()),
            n.to_string(),
        ]);
    }
    print!("{}", t.render());
    if !execute {
        println!("Dry run: nothing was committed. Add --execute to apply.");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn datetimes() {
        assert_eq!(parse_datetime("1970-01-01T00:00:00Z").unwrap(), 0);
        assert_eq!(parse_datetime("1970-01-01T00:00:01.5").unwrap(), 1500);
        assert_eq!(
            parse_datetime("2026-11-22T08:00:00Z").unwrap(),
            1_795_334_400_000
        );
        assert_eq!(
            parse_datetime("2026-11-22T10:00:00+02:00").unwrap(),
            1_795_334_400_000
        );
        assert_eq!(
            parse_datetime("2000-02-29T12:30:00.123Z").unwrap(),
            951_827_400_123
        );
        for bad in [
            "yesterday",
            "2026-13-01T00:00:00",
            "2026-11-22",
            "2026-11-22T25:00:00",
        ] {
            assert!(parse_datetime(bad).is_err(), "{bad}");
        }
    }
}
