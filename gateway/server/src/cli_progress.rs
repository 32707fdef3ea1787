//! Progress of a wait (`sync run --wait`, `rotate --wait`) on stderr: a
//! live bar on a terminal, one line per change of state otherwise, nothing
//! with `-o json`.

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

pub enum Progress {
    /// stderr is a terminal: a bar redrawn in place.
    Bar(ProgressBar),
    /// stderr is a file or a pipe: a line whenever the summary changes.
    Lines {
        what: String,
        last: String,
    },
    Quiet,
}

impl Progress {
    /// `what` prefixes every line (`sync`, `rotate secret/app/db`).
    pub fn new(json: bool, what: &str) -> Progress {
        if json {
            return Progress::Quiet;
        }
        if std::io::stderr().is_terminal() {
            let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr());
            let style = ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} {msg} ({elapsed})")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("#>.");
            bar.set_style(style);
            bar.set_prefix(what.to_string());
            bar.enable_steady_tick(std::time::Duration::from_millis(200));
            Progress::Bar(bar)
        } else {
            Progress::Lines { what: what.to_string(), last: String::new() }
        }
    }

    /// `done` of `total` steps; `summary` says the rest (counts per target).
    pub fn update(&mut self, done: u64, total: u64, summary: &str) {
        match self {
            Progress::Bar(bar) => {
                bar.set_length(total);
                bar.set_position(done.min(total));
                bar.set_message(summary.to_string());
            }
            Progress::Lines { what, last } => {
                let line = format!("{what}: {done}/{total} {summary}");
                if *last != line {
                    eprintln!("{line}");
                    *last = line;
                }
            }
            Progress::Quiet => {}
        }
    }

    /// Clears the bar (what follows prints the outcome).
    pub fn finish(&self) {
        if let Progress::Bar(bar) = self {
            bar.finish_and_clear();
        }
    }
}
