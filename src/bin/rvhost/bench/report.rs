//! The table printed as rows complete, and the JSON file.

use std::fmt::Write as _;

use super::clock::Clock;
use super::row::RowResult;
use super::{BenchArgs, Direction};

/// Prints the header once, then one line per row.
pub(crate) struct Report {
    header: Vec<String>,
    printed: bool,
    clock: Clock,
    args: BenchArgs,
}

impl Report {
    pub fn new(args: &BenchArgs, clock: Clock) -> Report {
        let unit = clock.unit;
        let mut header =
            vec![
            format!(
                "rvhost bench: backend core {}, frontend core {}, burst {}, queue size {}, \
                 {} s per row after {} s warm-up, {}",
                args.backend_core,
                args.frontend_core,
                args.burst,
                args.queue_size,
                args.duration,
                args.warmup,
                clock_line(&clock),
            ),
            "  Mpps: packets delivered in the window (g2h: dequeued by the backend; h2g, \
             loopback: received by the frontend)"
                .into(),
            "  Gbit/s: their Ethernet frame bytes (no virtio-net header, FCS, preamble or gap)"
                .into(),
            format!(
                "  {unit}/pkt: the backend core's {} in the window / packets (a pinned poll loop: \
                 idle polls included)",
                if unit == "cyc" { "TSC cycles" } else { "nanoseconds" },
            ),
            format!(
                "  busy: share of them in bursts that moved packets; busy {unit}/pkt: those per \
                 packet"
            ),
            "  pkt/burst: packets per such burst (near --burst: the backend is the bottleneck; \
             lower: it waits for the frontend)"
                .into(),
            "  drops: packets the backend had that the guest had no buffer for (testpmd's \
             TX-dropped)"
                .into(),
            "  fe busy: share of the frontend core's time in loop turns that did work (near 100%: \
             the frontend's core, with the soft engine on it, was the limit)"
                .into(),
            "  copy: cpu = the backend core copies; soft = async path, copies of at least the \
             threshold (t, default 256 B) go to the software DMA engine (e lanes), polled on \
             the frontend's core"
                .into(),
        ];
        if args.copy.0.iter().any(|c| c.is_model()) {
            header.push(
                "  ioat-model, dsa-model = async path, the IOAT or DSA driver over a software \
                         model of the device's registers (IOMMU strict: pool and guest memory \
                         mapped), stepped on the frontend's core: their throughput is a \
                         model's, not the hardware's"
                    .into(),
            );
        }
        header.push(format!(
            "{:<9}{:<14}{:<7}{:>4}{:>7}{:>9}{:>9}{:>10}{:>6}{:>15}{:>10}{:>11}{:>8}{:>22}  check",
            "dir",
            "copy",
            "ring",
            "mrg",
            "size",
            "Mpps",
            "Gbit/s",
            format!("{unit}/pkt"),
            "busy",
            format!("busy {unit}/pkt"),
            "pkt/burst",
            "drops",
            "fe busy",
            "lat p50/99/99.9 us",
        ));
        Report {
            header,
            printed: false,
            clock,
            args: args.clone(),
        }
    }

    /// The header printed before the first row.
    #[cfg(test)]
    pub fn header_lines(&self) -> &[String] {
        &self.header
    }

    /// Prints a note line (before the table if it has not started).
    pub fn note(&mut self, note: &str) {
        println!("{note}");
    }

    /// Prints a row (and the header before the first).
    pub fn row(&mut self, r: &RowResult) {
        if !self.printed {
            for h in &self.header {
                println!("{h}");
            }
            self.printed = true;
        }
        println!("{}", line(r));
        if let Some(e) = &r.error {
            println!("    FAILED: {e}");
        }
    }

    /// The run as JSON: settings and rows.
    pub fn json(&self, rows: &[RowResult]) -> String {
        let a = &self.args;
        // Cycles are the ticks where the clock is the TSC; elsewhere there are none.
        let tsc = self.clock.unit == "cyc";
        let cycles = |v: Option<f64>| match v {
            Some(v) if tsc => num(v),
            _ => "null".into(),
        };
        let mut s = String::new();
        let _ = write!(
            s,
            "{{\n  \"tool\": \"rvhost bench\",\n  \"backend_core\": {},\n  \"frontend_core\": {},\n  \
             \"burst\": {},\n  \"queue_size\": {},\n  \"duration_s\": {},\n  \"warmup_s\": {},\n  \
             \"tick_unit\": \"{}\",\n  \"tick_hz\": {},\n  \"rows\": [",
            a.backend_core,
            a.frontend_core,
            a.burst,
            a.queue_size,
            num(a.duration),
            num(a.warmup),
            self.clock.unit,
            num(self.clock.hz.round()),
        );
        for (i, r) in rows.iter().enumerate() {
            let sep = if i + 1 < rows.len() { "," } else { "" };
            let _ = write!(
                s,
                "\n    {{\"dir\": \"{}\", \"direction\": \"{}\", \"copy\": {}, \"ring\": \"{}\", \"mrg\": {}, \"size\": {}, \"secs\": {}, \
                 \"packets\": {}, \"bytes\": {}, \"mpps\": {}, \"gbps\": {}, \
                 \"ticks_per_pkt\": {}, \"busy_share\": {}, \"frontend_busy_share\": {}, \"latency_p50_ns\": {}, \"latency_p99_ns\": {}, \"latency_p999_ns\": {}, \"busy_ticks_per_pkt\": {}, \
                 \"cycles_per_pkt\": {}, \"busy_cycles_per_pkt\": {}, \
                 \"burst_fill\": {}, \"dropped\": {}, \"fe_sent\": {}, \"fe_received\": {}, \"be_dequeued\": {}, \
                 \"be_enqueued\": {}, \"frontend_pages\": \"{}\", \"ok\": {}, \"error\": {}}}{sep}",
                r.dir.name(),
                if r.dir == Direction::Loopback {
                    "loop"
                } else {
                    r.dir.name()
                },
                json_str(&r.copy.name()),
                r.ring.name(),
                r.mrg,
                r.size,
                num(r.secs),
                r.packets,
                r.bytes,
                num(r.mpps()),
                num(r.gbps()),
                r.ticks_per_pkt().map_or("null".into(), num),
                num(r.busy_share()),
                num(r.fe_busy_share()),
                r.latency_ns.map_or("null".into(), |l| num(l[0])),
                r.latency_ns.map_or("null".into(), |l| num(l[1])),
                r.latency_ns.map_or("null".into(), |l| num(l[2])),
                r.busy_per_pkt().map_or("null".into(), num),
                cycles(r.ticks_per_pkt()),
                cycles(r.busy_per_pkt()),
                r.burst_fill().map_or("null".into(), num),
                r.dropped,
                r.fe_sent,
                r.fe_received,
                r.be_dequeued,
                r.be_enqueued,
                r.frontend_pages,
                r.error.is_none(),
                r.error.as_deref().map_or("null".into(), json_str),
            );
        }
        s.push_str("\n  ]\n}\n");
        s
    }
}

fn clock_line(c: &Clock) -> String {
    if c.unit == "cyc" {
        format!("TSC {:.3} GHz (calibrated)", c.hz / 1e9)
    } else {
        "no TSC: times in ns".into()
    }
}

/// One table line.
fn line(r: &RowResult) -> String {
    let per = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.1}"));
    format!(
        "{:<9}{:<14}{:<7}{:>4}{:>7}{:>9.3}{:>9.2}{:>10}{:>5.0}%{:>15}{:>10}{:>11}{:>7.0}%{:>22}  {}",
        r.dir.name(),
        r.copy.name(),
        r.ring.name(),
        if r.mrg { "on" } else { "off" },
        r.size,
        r.mpps(),
        r.gbps(),
        per(r.ticks_per_pkt()),
        r.busy_share() * 100.0,
        per(r.busy_per_pkt()),
        per(r.burst_fill()),
        r.dropped,
        r.fe_busy_share() * 100.0,
        r.latency_ns.map_or("-".into(), |[a, b, c]| format!(
            "{:.1}/{:.1}/{:.1}",
            a / 1e3,
            b / 1e3,
            c / 1e3
        )),
        if r.error.is_none() { "ok" } else { "FAIL" },
    )
}

/// A finite number as JSON (`null` otherwise), at most 4 decimals.
fn num(v: f64) -> String {
    if !v.is_finite() {
        return "null".into();
    }
    let s = format!("{v:.4}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s.is_empty() || s == "-" {
        "0".into()
    } else {
        s.to_string()
    }
}

/// A JSON string literal.
pub(crate) fn json_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_and_strings_are_valid_json() {
        assert_eq!(num(1.5), "1.5");
        assert_eq!(num(2.0), "2");
        assert_eq!(num(0.0), "0");
        assert_eq!(num(f64::NAN), "null");
        assert_eq!(num(12.34567), "12.3457");
        assert_eq!(json_str("a\"b\\c\n\u{1}"), r#""a\"b\\c\n\u0001""#);
    }
}
