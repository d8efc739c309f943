//! The command line of the real binary: a mistyped flag is an error with a suggestion (exit
//! 2), never silently ignored; every subcommand answers `--help`; and README.md's command
//! table lists exactly the subcommands `skiff --help` shows, so neither goes stale.

use std::collections::BTreeSet;
use std::process::{Command, Output};

/// The binary under test.
const SKIFF: &str = env!("CARGO_BIN_EXE_skiff");

/// The README whose command table is checked.
const README: &str = include_str!("../../README.md");

fn skiff(args: &[&str]) -> Output {
    Command::new(SKIFF)
        .args(args)
        .output()
        .expect("the binary runs")
}

#[test]
fn a_mistyped_flag_exits_2_with_a_suggestion() {
    for (args, similar) in [
        (&["run", "--config", "f", "--worker", "2"][..], "--workers"),
        (&["tap", "--stauts", "5xx"], "--status"),
        (&["init-iptables", "--dryrun"], "--dry-run"),
        (&["inject", "--transparant"], "--transparent"),
        (&["identity", "dev-ca", "--dirs", "d"], "--dir"),
    ] {
        let out = skiff(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(
            stderr.contains(&format!("a similar argument exists: '{similar}'")),
            "{args:?}: {stderr}"
        );
        assert!(out.stdout.is_empty(), "{args:?} did nothing");
    }
}

#[test]
fn an_unknown_flag_or_value_is_refused_before_anything_runs() {
    for args in [
        &["run", "--config", "f", "--colour"][..],
        &["stat", "--status", "5xx"],
        &["tap", "--status", "6xx"],
        &["init-iptables", "--inbound-port", "4140"],
        &["no-such-command"],
    ] {
        let out = skiff(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(
            String::from_utf8_lossy(&out.stderr).starts_with("error: "),
            "{args:?}"
        );
    }
}

/// The subcommands a `--help` text lists under "Commands:", without clap's own `help`.
fn listed_commands(help: &str) -> Vec<String> {
    help.lines()
        .skip_while(|l| l.trim() != "Commands:")
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        .filter_map(|l| l.split_whitespace().next())
        .filter(|c| *c != "help")
        .map(str::to_owned)
        .collect()
}

/// Every command path `skiff --help` shows (`run`, `identity`, `identity dev-ca`...), each
/// checked to answer `--help` itself.
fn help_commands(prefix: &[&str]) -> BTreeSet<String> {
    let mut args = prefix.to_vec();
    args.push("--help");
    let out = skiff(&args);
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{args:?}");
    let usage = format!("Usage: skiff {}", prefix.join(" "));
    assert!(help.contains(usage.trim_end()), "{args:?}: {help}");
    let mut paths = BTreeSet::new();
    for command in listed_commands(&help) {
        let path: Vec<&str> = prefix.iter().copied().chain([command.as_str()]).collect();
        paths.insert(path.join(" "));
        paths.extend(help_commands(&path));
    }
    paths
}

/// Every command path README.md's command table names: in a row like
/// `| \`skiff identity dev-ca --dir DIR ...\` | ... |`, the words after `skiff` up to the
/// first flag or placeholder, and each prefix of them (`identity`, `identity dev-ca`).
fn readme_commands() -> BTreeSet<String> {
    let mut paths = BTreeSet::new();
    for row in README.lines().filter_map(|l| l.strip_prefix("| `skiff ")) {
        let words: Vec<&str> = row
            .split_whitespace()
            .map(|w| w.trim_end_matches('`'))
            .take_while(|w| {
                !w.is_empty()
                    && !w.starts_with('-')
                    && w.chars().all(|c| c.is_ascii_lowercase() || c == '-')
            })
            .collect();
        for n in 1..=words.len() {
            paths.insert(words[..n].join(" "));
        }
    }
    paths
}

#[test]
fn the_readme_command_table_matches_the_help() {
    let readme = readme_commands();
    assert!(
        readme.contains("run") && readme.contains("identity dev-ca"),
        "README.md's command table was not found: {readme:?}"
    );
    let help = help_commands(&[]);
    let missing_in_readme: Vec<_> = help.difference(&readme).collect();
    let missing_in_help: Vec<_> = readme.difference(&help).collect();
    assert!(
        missing_in_readme.is_empty() && missing_in_help.is_empty(),
        "in `skiff --help` but not in README.md's command table: {missing_in_readme:?}; \
         in the table but not in `--help`: {missing_in_help:?}"
    );
}
