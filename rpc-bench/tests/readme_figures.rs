//! The README's Performance section quotes the full run BENCHMARKS.md keeps: a `--write` that
//! replaces the run, or a hand edit of the README, cannot leave the README quoting figures no
//! table holds any more.

use std::path::Path;

/// A file of the workspace, read whole.
fn workspace_file(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|error| panic!("{name} is read: {error}"))
}

/// The README's section headed `heading`, up to the next section.
fn readme_section<'a>(readme: &'a str, heading: &str) -> &'a str {
    let (_, rest) = readme
        .split_once(&format!("\n## {heading}\n"))
        .unwrap_or_else(|| panic!("the README has a section `## {heading}`"));
    rest.split_once("\n## ")
        .map_or(rest, |(section, _)| section)
}

/// A figure as a README writes it (`12.0`, `879k`, `1,137k`, `48.5M`), with the tolerance its
/// digits imply: `879k` stands for anything from 878,500 to 879,500.
#[derive(Debug)]
struct Quoted {
    text: String,
    value: f64,
    tolerance: f64,
}

impl Quoted {
    fn parse(token: &str) -> Option<Quoted> {
        let (digits, scale) = match token.strip_suffix('k') {
            Some(digits) => (digits, 1e3),
            None => match token.strip_suffix('M') {
                Some(digits) => (digits, 1e6),
                None => (token, 1.0),
            },
        };
        let digits = digits.replace(',', "");
        if !digits.starts_with(|c: char| c.is_ascii_digit()) {
            return None;
        }
        let value: f64 = digits.parse().ok()?;
        let decimals = digits.split_once('.').map_or(0, |(_, after)| after.len());
        let unit = scale * 10f64.powi(-i32::try_from(decimals).ok()?);
        Some(Quoted {
            text: token.to_owned(),
            value: value * scale,
            tolerance: unit / 2.0,
        })
    }

    /// Whether `measured` reads as this figure at its precision.
    fn quotes(&self, measured: f64) -> bool {
        (measured - self.value).abs() <= self.tolerance * (1.0 + 1e-9)
    }
}

/// Every cell of BENCHMARKS.md's tables that is a figure alone (`879,288`, `12.0`, `0.2`).
fn measured_figures(benchmarks: &str) -> Vec<f64> {
    benchmarks
        .lines()
        .filter(|line| line.starts_with('|'))
        .flat_map(|line| line.split('|'))
        .map(|cell| cell.trim().replace(',', ""))
        .filter(|cell| cell.starts_with(|c: char| c.is_ascii_digit()))
        .filter_map(|cell| cell.parse().ok())
        .collect()
}

/// Each figure in the README's Performance table (the columns of rpc-core, tarpc and tonic, its
/// heading and rule aside) is a figure of one of BENCHMARKS.md's tables, rounded as the README
/// rounds it; and the README names the build that BENCHMARKS.md's run measured.
#[test]
fn the_readmes_performance_table_quotes_the_kept_run() {
    let readme = workspace_file("README.md");
    let benchmarks = workspace_file("BENCHMARKS.md");
    let performance = readme_section(&readme, "Performance");

    let (_, after) = benchmarks
        .split_once("This run measured the build `")
        .expect("BENCHMARKS.md names the build it measured");
    let (build, _) = after.split_once('`').expect("the build's name ends");
    assert!(
        performance.contains(&format!("at `{build}`")),
        "BENCHMARKS.md's run measured `{build}`, which the README's Performance section does not \
         name: quote the run BENCHMARKS.md keeps"
    );

    let measured = measured_figures(&benchmarks);
    let rows: Vec<&str> = performance
        .lines()
        .filter(|line| line.starts_with('|'))
        .skip(2)
        .collect();
    assert!(rows.len() >= 10, "the README's Performance table: {rows:?}");
    let mut quoted = 0;
    for row in rows {
        let cells: Vec<&str> = row.split('|').collect();
        // `| workload | rpc-core | tarpc | tonic |`: empty text before the first bar and after
        // the last.
        for cell in &cells[2..cells.len() - 1] {
            for figure in cell.split([' ', '/']).filter_map(Quoted::parse) {
                assert!(
                    measured
                        .iter()
                        .any(|&figure_there| figure.quotes(figure_there)),
                    "the README's Performance table quotes {} in the row `{row}`, which no table \
                     of BENCHMARKS.md holds: quote the run BENCHMARKS.md keeps",
                    figure.text
                );
                quoted += 1;
            }
        }
    }
    assert!(quoted >= 30, "only {quoted} figures were found to check");
}

/// The reading of a quoted figure: its value, and the half of its last digit that rounding
/// leaves open, so that a figure rounded further in the README still quotes the table's.
#[test]
fn a_quoted_figure_stands_for_what_rounds_to_it() {
    let figure = |token: &str| Quoted::parse(token).expect("a figure");
    assert!(figure("879k").quotes(879_288.0));
    assert!(figure("114k").quotes(113_542.0));
    assert!(!figure("114k").quotes(113_499.0));
    assert!(figure("1,137k").quotes(1_137_176.0));
    assert!(figure("48.5M").quotes(48_539_102.0));
    assert!(!figure("48.5M").quotes(48_450_000.0 - 1.0));
    assert!(figure("12.0").quotes(12.0));
    assert!(!figure("12.0").quotes(9.9));
    assert!(figure("0").quotes(0.0));
    assert!(figure("57").quotes(57.0));
    assert!(Quoted::parse("µs").is_none());
    assert!(Quoted::parse("(`Bytes`)").is_none());
    assert!(Quoted::parse("—").is_none());

    let table = "| Workload | a | b |\n|---|---:|---:|\n| p50 (µs) | 12.0 | 1,137,176 |\n\
                 | ratio | 1.24× raw (goal ≤ 1.1×): met | 3 |\n";
    assert_eq!(measured_figures(table), [12.0, 1_137_176.0, 3.0]);
}
