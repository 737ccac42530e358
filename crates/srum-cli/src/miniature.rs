//! `srum miniature`: the paper's comparison in miniature. SRUM and its baselines and variants,
//! each seed a full set of rows. Every row is what `srum demo` with the row's flags computes,
//! number for number; the rows of a seed share the base evaluation and the first round's
//! rollout and self-judgement, which do not depend on the recipe.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use burn::module::AutodiffModule;

use crate::demo::{RecipeArgs, RecipeRun, RunArgs, Start, roll_out_and_judge};

#[derive(clap::Args)]
pub struct MiniatureArgs {
    #[command(flatten)]
    run: RunArgs,
    /// Seeds (`--seed` is refused); each runs every row, in `OUT/seed-S/ROW/` (a demo's
    /// output folder each, but that `dual-rounds-R/` holds round R's rollout images only).
    #[arg(long, value_delimiter = ',', default_value = "0,1,2,3,4")]
    seeds: Vec<u64>,
    /// Rows to run, by name (default: all): sft, best-of-k, global, local, dual,
    /// dual-lambda-0, reference.
    #[arg(long, value_delimiter = ',')]
    rows: Option<Vec<String>>,
    /// Rounds of the `dual` row, evaluated after each (`dual-rounds-R/` from round 2 on; its
    /// token figures are the last round's).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
}

/// One row of the table: a recipe, as `srum demo` flags.
struct Row {
    name: &'static str,
    reward: &'static str,
    constraint: &'static str,
    lambda: f32,
}

/// The rows, the published recipe (dual reward, anchor constraint, λ 0.5) first among equals:
/// the paper's baselines and each of its parts alone under the same constraint, then the
/// constraint off and the frozen-reference constraint.
const ROWS: [Row; 7] = [
    Row {
        name: "sft",
        reward: "sft",
        constraint: "anchor",
        lambda: 0.5,
    },
    Row {
        name: "best-of-k",
        reward: "best-of-k",
        constraint: "anchor",
        lambda: 0.5,
    },
    Row {
        name: "global",
        reward: "global",
        constraint: "anchor",
        lambda: 0.5,
    },
    Row {
        name: "local",
        reward: "local",
        constraint: "anchor",
        lambda: 0.5,
    },
    Row {
        name: "dual",
        reward: "dual",
        constraint: "anchor",
        lambda: 0.5,
    },
    Row {
        name: "dual-lambda-0",
        reward: "dual",
        constraint: "anchor",
        lambda: 0.0,
    },
    Row {
        name: "reference",
        reward: "dual",
        constraint: "reference",
        lambda: 0.5,
    },
];

impl Row {
    fn recipe(&self) -> RecipeArgs {
        RecipeArgs {
            reward: self.reward.into(),
            constraint: self.constraint.into(),
            lambda: self.lambda,
            trainable: "generation-and-shared".into(),
        }
    }

    /// The `srum demo` flags this row (after `rounds` rounds) runs with.
    fn flags(&self, rounds: usize) -> String {
        let mut f = format!("--reward {} --lambda {}", self.reward, self.lambda);
        if self.constraint != "anchor" {
            f.push_str(&format!(" --constraint {}", self.constraint));
        }
        if rounds > 1 {
            f.push_str(&format!(" --rounds {rounds}"));
        }
        f
    }
}

/// The folder of `row` after `rounds` rounds, under a seed's folder.
fn row_dir(seed_dir: &Path, row: &Row, rounds: usize) -> PathBuf {
    if rounds > 1 {
        seed_dir.join(format!("{}-rounds-{rounds}", row.name))
    } else {
        seed_dir.join(row.name)
    }
}

pub fn run(a: MiniatureArgs) -> Result<ExitCode, String> {
    if a.run.sampling.seed != 0 {
        return Err("--seed: the miniature takes its seeds from --seeds".into());
    }
    if a.seeds.is_empty() || a.rounds == 0 {
        return Err("--seeds needs at least one seed and --rounds at least 1".into());
    }
    let rows: Vec<&Row> = match &a.rows {
        None => ROWS.iter().collect(),
        Some(names) => names
            .iter()
            .map(|n| {
                ROWS.iter().find(|r| r.name == n).ok_or_else(|| {
                    let known: Vec<&str> = ROWS.iter().map(|r| r.name).collect();
                    format!("--rows: no row {n:?} (rows: {})", known.join(", "))
                })
            })
            .collect::<Result<_, _>>()?,
    };
    let mut seen = std::collections::BTreeSet::new();
    let rows: Vec<&Row> = rows.into_iter().filter(|r| seen.insert(r.name)).collect();
    let rounds_of = |row: &Row| if row.name == "dual" { a.rounds } else { 1 };
    let mut settings = None;
    for &seed in &a.seeds {
        let seed_dir = a.run.out.join(format!("seed-{seed}"));
        let begin = Instant::now();
        let mut run = a.run.clone();
        run.sampling.seed = seed;
        let (start, model) = Start::new(&run)?;
        let expected = start.settings(&run)?;
        // A row is done when its last folder has results of these settings (rerun to continue).
        let mut todo = Vec::new();
        for &row in &rows {
            let path = row_dir(&seed_dir, row, rounds_of(row)).join("results.json");
            if !path.exists() {
                todo.push(row);
            } else {
                read_figures(&path, &expected)?;
            }
        }
        settings = Some(expected);
        if todo.is_empty() {
            eprintln!("seed {seed}: every row is done");
            continue;
        }
        let before = start.evaluate(&run, &model.valid(), "evaluating (before)")?;
        // Round 1's rollout and self-judgement, as every row's recipe run would draw them.
        let mut rng = start.rng.clone();
        let samples = roll_out_and_judge(&run, 0, &model.valid(), &start.train, &mut rng)?;
        drop(model);
        let shared = begin.elapsed().as_secs_f64();
        for row in todo {
            let began = Instant::now();
            let recipe = row.recipe();
            let mut row_run = run.clone();
            row_run.out = row_dir(&seed_dir, row, 1);
            let (model, _) = crate::demo::load(&row_run)?;
            let mut r = RecipeRun::new(&row_run, &recipe, &start, model, rng.clone())?;
            r.train(samples.clone())?;
            for round in 1..=rounds_of(row) {
                if round > 1 {
                    r.set_out(row_dir(&seed_dir, row, round))?;
                    let next = r.roll_out()?;
                    r.train(next)?;
                }
                let extra = serde_json::json!({
                    "row": row.name,
                    "flags": row.flags(round),
                    "shared_seconds": shared,
                });
                let (_, after) = r.finish(&before, began, extra)?;
                eprintln!(
                    "seed {seed}, {} ({}): overall {:.2} -> {:.2}",
                    row.name,
                    row.flags(round),
                    before.report.overall,
                    after.report.overall
                );
            }
        }
    }
    let settings = settings.ok_or("no seed")?;
    let table = summary(&a.run.out, &rows, rounds_of, &settings)?;
    srum::train::write_file_atomic(&a.run.out.join("table.md"), table.as_bytes())
        .map_err(|e| e.to_string())?;
    println!("{table}");
    Ok(ExitCode::SUCCESS)
}

/// Mean and sample standard deviation (0 for one value).
fn mean_sd(xs: &[f64]) -> (f64, f64) {
    let n = xs.len() as f64;
    let mean = xs.iter().sum::<f64>() / n;
    if xs.len() < 2 {
        return (mean, 0.0);
    }
    let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0);
    (mean, var.sqrt())
}

/// One finished run's figures: overall before and after, understanding before and after, and
/// per token kind of its last round (asked, other, background; none where its rollout had no
/// token of the kind) the mean map value and the relative change of the flow error.
struct Figures {
    seed: u64,
    before: f64,
    after: f64,
    understanding: Option<(f64, f64)>,
    /// The strict oracle's overall before and after (runs that recorded it).
    strict: Option<(f64, f64)>,
    tokens: Vec<Option<(f64, f64)>>,
}

/// The token kinds of results.json `token_figures`, in table order.
const KINDS: [&str; 3] = ["asked", "other", "background"];

/// The figures of the results at `path`, refused where a setting it records differs from
/// `expected` (a setting it lacks, from an older demo, is not checked).
fn read_figures(
    path: &Path,
    expected: &serde_json::Map<String, serde_json::Value>,
) -> Result<Figures, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let v: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    for (key, want) in expected {
        if let Some(got) = v.get(key)
            && got != want
        {
            return Err(format!(
                "{}: ran with {key} {got}, this run asks for {want}; give another --out",
                path.display()
            ));
        }
    }
    let num = |field: &str| -> Result<f64, String> {
        field
            .split('.')
            .try_fold(&v, |v, k| v.get(k))
            .and_then(|x| x.as_f64())
            .ok_or_else(|| format!("{}: no number at {field}", path.display()))
    };
    let understanding = match (num("understanding_before"), num("understanding_after")) {
        (Ok(b), Ok(x)) => Some((b, x)),
        _ => None,
    };
    let strict = match (num("before_strict.overall"), num("after_strict.overall")) {
        (Ok(b), Ok(x)) => Some((b, x)),
        _ => None,
    };
    let last = v["token_figures"]
        .as_array()
        .and_then(|rounds| rounds.last())
        .ok_or_else(|| format!("{}: no token_figures", path.display()))?;
    let mut tokens = Vec::new();
    for kind in KINDS {
        // Absent where the rollout had no token of the kind; null where a loss was not finite.
        let field = |f: &str| last.get(kind).and_then(|k| k[f].as_f64());
        tokens.push(
            match (field("map_mean"), field("loss_before"), field("loss_after")) {
                (Some(m), Some(b), Some(x)) => Some((m, x / b - 1.0)),
                _ => None,
            },
        );
    }
    Ok(Figures {
        seed: num("seed")? as u64,
        before: num("before.overall")?,
        after: num("after.overall")?,
        understanding,
        strict,
        tokens,
    })
}

/// The table over every seed folder under `out` that holds results of `rows`: the base model,
/// then each row's change in the held-out oracle score (mean ± sample sd over seeds).
fn summary(
    out: &Path,
    rows: &[&Row],
    rounds_of: impl Fn(&Row) -> usize,
    settings: &serde_json::Map<String, serde_json::Value>,
) -> Result<String, String> {
    let mut seed_dirs: Vec<PathBuf> = std::fs::read_dir(out)
        .map_err(|e| format!("{}: {e}", out.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.is_dir()
                && p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("seed-"))
        })
        .collect();
    seed_dirs.sort();
    let mut by_row: BTreeMap<(usize, usize), (String, Vec<Figures>)> = BTreeMap::new();
    // Per seed: overall, understanding and strict overall before training.
    let mut base: BTreeMap<u64, (f64, Option<f64>, Option<f64>)> = BTreeMap::new();
    for dir in &seed_dirs {
        for (i, row) in rows.iter().enumerate() {
            for round in 1..=rounds_of(row) {
                let path = row_dir(dir, row, round).join("results.json");
                if !path.exists() {
                    continue;
                }
                let f = read_figures(&path, settings)?;
                // Every row of a seed starts from the same model; some recorded more of it.
                let b = base.entry(f.seed).or_insert((f.before, None, None));
                b.1 = b.1.or(f.understanding.map(|u| u.0));
                b.2 = b.2.or(f.strict.map(|s| s.0));
                by_row
                    .entry((i, round))
                    .or_insert_with(|| (row.flags(round), Vec::new()))
                    .1
                    .push(f);
            }
        }
    }
    let pct = |u: f64| format!("{:.1}%", 100.0 * u);
    let mut t = String::from(
        "| row | `srum demo` flags | seeds | overall after | change | strict oracle: change | \
         understanding after |\n|---|---|---:|---:|---:|---:|---:|\n",
    );
    let mut tokens = String::new();
    let befores: Vec<f64> = base.values().map(|b| b.0).collect();
    if !befores.is_empty() {
        let (m, s) = mean_sd(&befores);
        let und: Vec<f64> = base.values().filter_map(|b| b.1).collect();
        let u = if und.is_empty() {
            "-".into()
        } else {
            pct(mean_sd(&und).0)
        };
        let strict: Vec<f64> = base.values().filter_map(|b| b.2).collect();
        let st = match strict.is_empty() {
            true => String::new(),
            false => {
                let (m, s) = mean_sd(&strict);
                format!("overall {m:.2} ± {s:.2} ({} seeds)", strict.len())
            }
        };
        let seeds: Vec<String> = base.keys().map(|s| s.to_string()).collect();
        t.push_str(&format!(
            "| base (before training) | | {} | {m:.2} ± {s:.2} | | {st} | {u} |\n",
            seeds.join(", ")
        ));
    }
    for ((i, round), (flags, figs)) in &by_row {
        let name = if *round > 1 {
            format!("{}, {round} rounds", rows[*i].name)
        } else {
            rows[*i].name.to_string()
        };
        let after: Vec<f64> = figs.iter().map(|f| f.after).collect();
        let change: Vec<f64> = figs.iter().map(|f| f.after - f.before).collect();
        let und: Vec<f64> = figs
            .iter()
            .filter_map(|f| f.understanding.map(|u| u.1))
            .collect();
        let (am, asd) = mean_sd(&after);
        let (cm, csd) = mean_sd(&change);
        let u = if und.is_empty() {
            "-".into()
        } else {
            pct(mean_sd(&und).0)
        };
        let seeds: Vec<String> = figs.iter().map(|f| f.seed.to_string()).collect();
        let strict: Vec<f64> = figs
            .iter()
            .filter_map(|f| f.strict.map(|(b, x)| x - b))
            .collect();
        let st = match strict.len() {
            0 => "-".to_string(),
            n if n == figs.len() => {
                let (m, s) = mean_sd(&strict);
                format!("{m:+.2} ± {s:.2}")
            }
            n => {
                let (m, s) = mean_sd(&strict);
                format!("{m:+.2} ± {s:.2} ({n} of {} seeds)", figs.len())
            }
        };
        t.push_str(&format!(
            "| {name} | `{flags}` | {} | {am:.2} ± {asd:.2} | {cm:+.2} ± {csd:.2} | {st} | {u} |\n",
            seeds.join(", ")
        ));
        let mut line = format!("| {name} |");
        let of_kind =
            |k: usize| -> Vec<(f64, f64)> { figs.iter().filter_map(|f| f.tokens[k]).collect() };
        for k in 0..KINDS.len() {
            let maps: Vec<f64> = of_kind(k).iter().map(|t| t.0).collect();
            match maps.is_empty() {
                true => line.push_str(" - |"),
                false => line.push_str(&format!(" {:.3} |", mean_sd(&maps).0)),
            }
        }
        for k in 0..KINDS.len() {
            let changes: Vec<f64> = of_kind(k).iter().map(|t| t.1).collect();
            if changes.is_empty() {
                line.push_str(" - |");
                continue;
            }
            let (m, s) = mean_sd(&changes);
            line.push_str(&format!(" {:+.1}% ± {:.1} |", 100.0 * m, 100.0 * s));
        }
        tokens.push_str(&line);
        tokens.push('\n');
    }
    t.push_str(
        "\nOn the rollout images' latent tokens, by what the strict oracle finds there (asked \
         object, other blob, background): the mean reward map value, and the change of the flow \
         error (t in 0.25, 0.5, 0.75; same noise before and after training), mean over seeds.\n\n\
         | row | map: asked | map: other | map: background | error: asked | error: other | \
         error: background |\n|---|---:|---:|---:|---:|---:|---:|\n",
    );
    t.push_str(&tokens);
    Ok(t)
}

#[cfg(test)]
mod tests {
    use super::mean_sd;

    #[test]
    fn mean_and_sample_sd() {
        let (m, s) = mean_sd(&[1.0, 2.0, 3.0, 4.0]);
        assert!((m - 2.5).abs() < 1e-12);
        // sum of squares 5, over n - 1 = 3
        assert!((s - (5.0f64 / 3.0).sqrt()).abs() < 1e-12);
        assert_eq!(mean_sd(&[7.0]), (7.0, 0.0));
    }
}
