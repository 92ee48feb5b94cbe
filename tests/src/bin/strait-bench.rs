//! `strait-bench [--quick] [--out FILE]`: per-packet cost of the datapath through BPF_PROG_TEST_RUN,
//! as ratios to bare programs measured in the same run. Writes one JSON document (stdout, or FILE) and
//! progress on stderr. Needs root. Normally run by `cargo xtask bench`, which also writes the report.

use std::io::Write;

use tests::{bench, privilege};

fn main() -> anyhow::Result<()> {
    let mut quick = false;
    let mut out: Option<String> = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--quick" => quick = true,
            "--full" => quick = false,
            "--out" => out = Some(args.next().ok_or_else(|| anyhow::anyhow!("--out needs a file"))?),
            "-h" | "--help" => {
                println!("usage: strait-bench [--quick|--full] [--out FILE]");
                return Ok(());
            }
            other => anyhow::bail!("unknown argument {other:?} (usage: strait-bench [--quick] [--out FILE])"),
        }
    }
    if let Some(why) = privilege::missing_privilege() {
        anyhow::bail!("strait-bench needs root: {why}");
    }
    let params = if quick {
        bench::Params::quick()
    } else {
        bench::Params::full()
    };
    let report = bench::run_all(&params)?;
    let json = serde_json::to_string_pretty(&report)?;
    match out {
        Some(path) => std::fs::write(&path, json + "\n")?,
        None => {
            let mut stdout = std::io::stdout().lock();
            writeln!(stdout, "{json}")?;
        }
    }
    Ok(())
}
