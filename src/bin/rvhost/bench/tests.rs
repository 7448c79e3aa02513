//! Short runs of every direction (both mrg settings), and argument checks.

use clap::Parser;

use super::*;

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    args: BenchArgs,
}

/// Bench runs pin busy-polling threads to the same two cores: two at once would starve each
/// other (a drain then looks finished while packets are still in flight). Each holds this.
static BENCH_RUN: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn run_alone(args: &BenchArgs) -> Result<(), BenchError> {
    let _alone = BENCH_RUN.lock().unwrap_or_else(|e| e.into_inner());
    run(args)
}

fn parse(argv: &[&str]) -> Result<BenchArgs, clap::Error> {
    Cli::try_parse_from(std::iter::once("bench").chain(argv.iter().copied())).map(|c| c.args)
}

#[test]
fn defaults_match_the_documented_ones() {
    assert_eq!(parse(&[]).unwrap(), BenchArgs::default());
    BenchArgs::default().validate().unwrap();
}

#[test]
fn lists_and_values_parse() {
    let a = parse(&[
        "--dir",
        "h2g,loopback",
        "--sizes",
        "64,9000",
        "--mrg",
        "on,off",
        "--duration",
        "0.5",
        "--burst",
        "64",
        "--queue-size",
        "256",
        "--backend-core",
        "1",
        "--frontend-core",
        "0",
        "--json",
        "/tmp/x.json",
    ])
    .unwrap();
    assert_eq!(a.dirs, vec![Direction::H2g, Direction::Loopback]);
    assert_eq!(a.sizes, vec![64, 9000]);
    assert_eq!(a.mrg, vec![Toggle::On, Toggle::Off]);
    assert_eq!(
        (a.burst, a.queue_size, a.backend_core, a.frontend_core),
        (64, 256, 1, 0)
    );
    assert_eq!(a.copy, CopyModes(vec![CopyMode::Cpu]));
    let c = parse(&["--copy", "cpu,soft,soft,threshold=0,engines=4"]).unwrap();
    let soft = |threshold, lanes| CopyMode::Soft { threshold, lanes };
    assert_eq!(
        c.copy.0,
        vec![CopyMode::Cpu, soft(256, 1), soft(0, 4)],
        "options apply to the soft before them"
    );
    assert_eq!(c.copy.0[2].name(), "soft:t=0,e=4");
    let m = parse(&["--copy", "ioat-model,dsa-model,threshold=0"]).unwrap();
    assert_eq!(
        m.copy.0,
        vec![
            CopyMode::Model {
                kind: ModelKind::Ioat,
                threshold: 256
            },
            CopyMode::Model {
                kind: ModelKind::Dsa,
                threshold: 0
            }
        ],
        "threshold applies to the model before it"
    );
    let names: Vec<_> = m.copy.0.iter().map(|c| c.name()).collect();
    assert_eq!(names, ["ioat-model", "dsa-model:t=0"]);
    for bad in [
        "",
        "dma",
        "threshold=5",
        "cpu,engines=2",
        "soft,engines=0",
        "soft,threshold=x",
        "ioat-model,engines=2",
        "ioat:0000:00:04.0",
        "dsa:0000:6a:01.0",
    ] {
        assert!(parse(&["--copy", bad]).is_err(), "--copy {bad:?}");
    }
    assert!(parse(&["--dir", "sideways"]).is_err());
    assert!(parse(&["--mrg", "maybe"]).is_err());
}

#[test]
fn out_of_range_arguments_are_refused() {
    let with = |f: fn(&mut BenchArgs)| {
        let mut a = BenchArgs::default();
        f(&mut a);
        a.validate().unwrap_err().to_string()
    };
    assert!(with(|a| a.sizes = vec![41]).contains("--sizes"));
    assert!(with(|a| a.sizes = vec![]).contains("--sizes"));
    assert!(with(|a| a.duration = 0.0).contains("--duration"));
    assert!(with(|a| a.duration = f64::NAN).contains("--duration"));
    assert!(with(|a| a.warmup = -1.0).contains("--warmup"));
    assert!(with(|a| a.queue_size = 1000).contains("--queue-size"));
    assert!(with(|a| a.burst = 0).contains("--burst"));
    assert!(with(|a| a.burst = 600).contains("--burst"));
    assert!(with(|a| a.rings = vec![]).contains("--ring"));
    assert_eq!(
        parse(&["--ring", "split,packed"]).unwrap().rings,
        vec![RingLayout::Split, RingLayout::Packed]
    );
    assert!(parse(&["--ring", "round"]).is_err());
}

/// `--ring split,packed`: every direction on both layouts, both mrg settings, each row's
/// exact accounting holding; the JSON names each row's ring.
#[test]
fn packed_rings_run_beside_split_ones() {
    let cores = rvhost::lcore::allowed_cores();
    let json = std::env::temp_dir().join(format!("rvhost-bench-rings-{}.json", std::process::id()));
    let args = BenchArgs {
        sizes: vec![64, 1518],
        mrg: vec![Toggle::On, Toggle::Off],
        rings: vec![RingLayout::Split, RingLayout::Packed],
        copy: CopyModes::parse("cpu,soft,threshold=64").unwrap(),
        duration: 0.1,
        warmup: 0.05,
        queue_size: 256,
        backend_core: cores[0],
        frontend_core: *cores.get(1).unwrap_or(&cores[0]),
        json: Some(json.clone()),
        ..BenchArgs::default()
    };
    run_alone(&args).unwrap();
    let text = std::fs::read_to_string(&json).unwrap();
    let _ = std::fs::remove_file(&json);
    // 3 directions x 2 sizes x 2 mrg x 2 copy modes per layout: the async path (soft) runs
    // packed rings too.
    assert_eq!(text.matches("\"ring\": \"packed\"").count(), 24, "{text}");
    assert_eq!(text.matches("\"ring\": \"split\"").count(), 24, "{text}");
    assert_eq!(text.matches("\"ok\": true").count(), 48, "{text}");
    assert!(
        !text.contains("\"packets\": 0,"),
        "every row moved packets: {text}"
    );
}

/// Every direction, both mrg settings, a small and a jumbo frame: short windows, but the
/// exact end-of-row accounting must hold. Cores: the first two this process may use (or
/// the same one twice on a one-core machine).
#[test]
fn every_direction_delivers_and_accounts_for_every_packet() {
    let cores = rvhost::lcore::allowed_cores();
    let json = std::env::temp_dir().join(format!("rvhost-bench-test-{}.json", std::process::id()));
    let svg = json.with_extension("svg");
    let args = BenchArgs {
        sizes: vec![64, 9000],
        mrg: vec![Toggle::On, Toggle::Off],
        duration: 0.1,
        warmup: 0.05,
        queue_size: 256,
        backend_core: cores[0],
        frontend_core: *cores.get(1).unwrap_or(&cores[0]),
        json: Some(json.clone()),
        plot: Some(svg.clone()),
        // Every copy goes to the engine (threshold 0), on two lanes.
        copy: CopyModes::parse("cpu,soft,threshold=0,engines=2").unwrap(),
        ..BenchArgs::default()
    };
    run_alone(&args).unwrap();
    let text = std::fs::read_to_string(&json).unwrap();
    let _ = std::fs::remove_file(&json);
    let drawing = std::fs::read_to_string(&svg).unwrap();
    let _ = std::fs::remove_file(&svg);
    assert!(
        drawing.contains("<svg") && drawing.contains("Mpps"),
        "{drawing}"
    );
    // Completion latency for the async enqueue rows (h2g, loopback), none for the others.
    let with_latency = text.matches("\"latency_p50_ns\": ").count()
        - text.matches("\"latency_p50_ns\": null").count();
    assert_eq!(with_latency, 2 * 2 * 2, "{text}");
    // Every direction with both copy modes.
    assert_eq!(text.matches("\"ok\": true").count(), 6 * 2 * 2, "{text}");
    assert_eq!(
        text.matches("\"copy\": \"soft:t=0,e=2\"").count(),
        3 * 2 * 2,
        "{text}"
    );
    assert!(
        !text.contains("\"packets\": 0,"),
        "every row moved packets: {text}"
    );
}

/// `--copy cpu,soft,ioat-model,dsa-model`: a row for each, side by side, every copy of the
/// async modes on the engine (threshold 0); the models' rows are flagged as a model's.
#[test]
fn the_engines_and_the_models_run_side_by_side() {
    let cores = rvhost::lcore::allowed_cores();
    let json =
        std::env::temp_dir().join(format!("rvhost-bench-models-{}.json", std::process::id()));
    let args = BenchArgs {
        dirs: vec![Direction::H2g, Direction::G2h],
        sizes: vec![1518],
        mrg: vec![Toggle::On],
        duration: 0.1,
        warmup: 0.05,
        queue_size: 256,
        backend_core: cores[0],
        frontend_core: *cores.get(1).unwrap_or(&cores[0]),
        json: Some(json.clone()),
        copy: CopyModes::parse("cpu,soft,threshold=0,ioat-model,threshold=0,dsa-model,threshold=0")
            .unwrap(),
        ..BenchArgs::default()
    };
    let report = report::Report::new(&args, clock::Clock::calibrate());
    let header = report.header_lines();
    assert!(
        header
            .iter()
            .any(|l| l.contains("ioat-model, dsa-model")
                && l.contains("a model's, not the hardware's")),
        "{header:#?}"
    );
    let plain = report::Report::new(&BenchArgs::default(), clock::Clock::calibrate());
    assert!(!plain.header_lines().iter().any(|l| l.contains("model")));
    run_alone(&args).unwrap();
    let text = std::fs::read_to_string(&json).unwrap();
    let _ = std::fs::remove_file(&json);
    assert_eq!(text.matches("\"ok\": true").count(), 2 * 4, "{text}");
    for name in ["cpu", "soft:t=0,e=1", "ioat-model:t=0", "dsa-model:t=0"] {
        assert_eq!(
            text.matches(&format!("\"copy\": \"{name}\"")).count(),
            2,
            "{name}: {text}"
        );
    }
    assert!(
        !text.contains("\"packets\": 0,"),
        "every row moved packets: {text}"
    );
}

#[test]
fn the_small_pages_note_is_one_line_printed_once() {
    let mut n = PageNotes::new(false, PageSize::Small);
    let first = n.after_row(PageSize::Small).unwrap();
    assert!(first.contains("packet pool and the frontend"), "{first}");
    assert!(first.contains("nr_hugepages") && !first.contains('\n'));
    assert_eq!(n.after_row(PageSize::Small), None);
    let mut n = PageNotes::new(true, PageSize::Huge2M);
    assert_eq!(n.after_row(PageSize::Huge2M), None);
    assert!(
        n.after_row(PageSize::Small)
            .unwrap()
            .contains("--small-pages")
    );
    assert_eq!(n.after_row(PageSize::Small), None);
}
