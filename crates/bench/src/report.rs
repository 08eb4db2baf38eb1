//! Writes `docs/benchmarks.md`: the machine, versions, settings, one table per mode, memory,
//! and the goals marked met or missed.

use std::fmt::Write as _;

use crate::cpu::Cpu;
use crate::scenarios::Row;

/// What the report says about where it ran.
#[derive(Debug, Default)]
pub struct Context {
    pub facts: Vec<(String, String)>,
    pub settings: Vec<(String, String)>,
    /// Per mode: current RSS per process right after start, before any request.
    pub idle: Vec<(String, Vec<(String, f64)>)>,
}

/// One of the goals, checked against the measurements.
#[derive(Debug)]
pub struct Goal {
    pub goal: String,
    pub measured: String,
    pub met: Option<bool>,
}

fn ms(value: Option<f64>) -> String {
    match value {
        Some(value) if value >= 100.0 => format!("{value:.0}"),
        Some(value) if value >= 10.0 => format!("{value:.1}"),
        Some(value) => format!("{value:.2}"),
        None => "–".to_owned(),
    }
}

fn memory(peaks: &[(String, f64)]) -> String {
    match peaks {
        [] => "–".to_owned(),
        [(_, mib)] => format!("{mib:.1}"),
        many => {
            let total: f64 = many.iter().map(|(_, mib)| mib).sum();
            let (name, max) =
                many.iter().fold((&many[0].0, 0.0), |acc, (name, mib)| if *mib > acc.1 { (name, *mib) } else { acc });
            format!("{total:.1} (max {name} {max:.1})")
        }
    }
}

fn table(out: &mut String, rows: &[&Row]) {
    out.push_str(
        "| scenario | VUs | ops | ops/s | p50 ms | p99 ms | p99.9 ms | max ms | errors | peak RSS MiB | vs limit | notes |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---|\n",
    );
    for row in rows {
        let rate = if row.stats.elapsed.is_zero() { "–".to_owned() } else { format!("{:.0}", row.throughput()) };
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            row.scenario,
            row.users,
            row.count(),
            rate,
            ms(row.quantile_ms(0.5)),
            ms(row.quantile_ms(0.99)),
            ms(row.quantile_ms(0.999)),
            ms(row.stats.max_ms(row.label())),
            row.stats.error_summary(),
            memory(&row.peak_mib),
            if row.vs.is_empty() { "–" } else { &row.vs },
            row.note
        );
    }
}

/// The servers' CPU per full purchase in `mode`: a reservation (at 8 buyers) plus a payment,
/// each with its event cascade.
pub fn full_purchase_cpu(rows: &[Row], mode: &str) -> Option<Cpu> {
    let phase = |prefix: &str| {
        rows.iter().find(|row| row.mode == mode && row.scenario.starts_with(prefix) && row.users == 8)?.cpu
    };
    Some(phase("reserve")?.plus(&phase("pay")?))
}

fn cpu_table(out: &mut String, rows: &[&Row], full_purchase: Option<Cpu>) {
    let measured: Vec<&&Row> = rows.iter().filter(|row| row.cpu.is_some()).collect();
    if measured.is_empty() {
        return;
    }
    let machine_wide = measured.iter().any(|row| row.cpu.is_some_and(|cpu| cpu.nats_machine_wide));
    out.push_str(
        "\nCPU milliseconds per operation, from `/proc/<pid>/stat` (utime + stime) before the first \
         request and after the servers went quiet again (so the events an operation caused are \
         counted with it). Total = ours + PostgreSQL + NATS; in embedded mode SQLite and the event \
         bus run inside our process, so everything is in ours.\n\n\
         | scenario | VUs | ops | ours | PostgreSQL | NATS | **total** | load generator | PostgreSQL shared (machine-wide) | measured over s |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    let line = |out: &mut String, scenario: &str, users: String, ops: String, cpu: &Cpu, over: String| {
        let _ = writeln!(
            out,
            "| {scenario} | {users} | {ops} | {:.2} | {:.2} | {:.2} | **{:.2}** | {:.2} | {:.2} | {over} |",
            cpu.ours,
            cpu.postgres,
            cpu.nats,
            cpu.total(),
            cpu.load_generator,
            cpu.postgres_shared,
        );
    };
    for row in measured {
        let cpu = row.cpu.expect("filtered");
        let ops = if row.scenario.starts_with("flash sale") {
            row.stats.total_ok() + row.stats.error_count()
        } else if row.scenario.starts_with("propagation") {
            row.stats.count("sample")
        } else {
            row.count()
        };
        // Rows sharing a phase carry its CPU on the first: name the whole phase.
        let scenario = if row.scenario.starts_with("flash sale") {
            "flash sale: every attempt"
        } else if row.scenario.starts_with("propagation") {
            "propagation: list → order → pay → complete"
        } else if row.scenario.starts_with("expiration") {
            "expiration: order → expired"
        } else {
            row.scenario.as_str()
        };
        line(out, scenario, row.users.to_string(), ops.to_string(), &cpu, format!("{:.1}", cpu.elapsed.as_secs_f64()));
    }
    if let Some(cpu) = full_purchase {
        line(out, "**full purchase = reserve (8 VUs) + pay**", "8".into(), "–".into(), &cpu, "–".into());
    }
    if machine_wide {
        out.push_str("\nNATS is a server shared with other users of this machine: its CPU is machine-wide.\n");
    }
}

pub fn render(context: &Context, rows: &[Row], goals: &[Goal], command: &str) -> String {
    let mut out = String::new();
    out.push_str("# Benchmarks\n\n");
    let _ = writeln!(
        out,
        "Generated by `{command}` (crates/bench); do not edit by hand. Every figure was measured in \
         the same run as the limits it is compared with, on the machine below, so ratios carry over \
         to other machines better than absolute numbers do.\n"
    );
    out.push_str(
        "How to read it: a virtual user (VU) sends one request, waits for the answer, sends the next \
         (closed loop, HTTP/1.1 keep-alive over loopback, from the same machine, so the load generator \
         competes with the servers for the same cores). Latency is from sending the request to \
         reading the whole body. Errors are answers other than the expected one, by status and message. \
         Peak RSS is the server processes' `VmHWM` during that scenario (reset before each one); for \
         one process per service it is the sum, with the largest process named.\n\n",
    );

    out.push_str("## Machine and versions\n\n| | |\n|---|---|\n");
    for (key, value) in &context.facts {
        let _ = writeln!(out, "| {key} | {value} |");
    }
    out.push_str("\n## Settings\n\n| | |\n|---|---|\n");
    for (key, value) in &context.settings {
        let _ = writeln!(out, "| {key} | {value} |");
    }

    out.push_str("\n## Goals\n\n| goal | measured | |\n|---|---|---|\n");
    for goal in goals {
        let mark = match goal.met {
            Some(true) => "met",
            Some(false) => "**missed**",
            None => "not measured",
        };
        let _ = writeln!(out, "| {} | {} | {mark} |", goal.goal, goal.measured);
    }

    let mut modes: Vec<&str> = Vec::new();
    for row in rows {
        if !modes.contains(&row.mode.as_str()) {
            modes.push(&row.mode);
        }
    }
    for mode in modes {
        let _ = writeln!(out, "\n## {mode}\n");
        let selected: Vec<&Row> = rows.iter().filter(|row| row.mode == mode).collect();
        table(&mut out, &selected);
        cpu_table(&mut out, &selected, full_purchase_cpu(rows, mode));
    }

    if !context.idle.is_empty() {
        out.push_str("\n## Memory at rest\n\nRSS right after start, before any request (MiB).\n\n");
        for (mode, procs) in &context.idle {
            let list: Vec<String> = procs.iter().map(|(name, mib)| format!("{name} {mib:.1}")).collect();
            let _ = writeln!(out, "- {mode}: {}", list.join(", "));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_latencies_and_memory() {
        assert_eq!(ms(Some(0.123)), "0.12");
        assert_eq!(ms(Some(12.34)), "12.3");
        assert_eq!(ms(Some(1234.0)), "1234");
        assert_eq!(ms(None), "–");
        assert_eq!(memory(&[("all-in-one".into(), 40.0)]), "40.0");
        assert_eq!(memory(&[("auth".into(), 10.0), ("orders".into(), 30.0)]), "40.0 (max orders 30.0)");
    }

    #[test]
    fn a_full_purchase_is_a_reservation_at_8_plus_a_payment() {
        let stats = crate::load::Stats::default();
        let cpu = |ours: f64| Cpu { ours, postgres: 2.0 * ours, nats: 1.0, ..Cpu::default() };
        let rows = vec![
            Row::new("pg", "reserve: POST /api/orders", 8, None, &stats).cpu(cpu(20.0), 10),
            Row::new("pg", "reserve: POST /api/orders", 32, None, &stats).cpu(cpu(90.0), 10),
            Row::new("pg", "pay: POST /api/payments", 8, None, &stats).cpu(cpu(50.0), 10),
        ];
        let full = full_purchase_cpu(&rows, "pg").expect("both phases measured");
        assert_eq!((full.ours, full.postgres, full.nats), (7.0, 14.0, 0.2));
        assert!(full_purchase_cpu(&rows, "embedded").is_none());

        let mut out = String::new();
        cpu_table(&mut out, &rows.iter().collect::<Vec<_>>(), Some(full));
        assert!(
            out.contains("| **full purchase = reserve (8 VUs) + pay** | 8 | – | 7.00 | 14.00 | 0.20 | **21.20** |"),
            "{out}"
        );
    }
}
