//! `podshaper completions SHELL` and `podshaper man`: the shell completions
//! and manual pages, generated from the same clap definitions that parse
//! the command line, so they never disagree with it.

use std::fs;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Command};
use clap_complete::Shell;

#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell to complete for, e.g. `podshaper completions bash >
    /// /etc/bash_completion.d/podshaper`.
    #[arg(value_enum)]
    shell: Shell,
}

#[derive(Debug, Args)]
pub struct ManArgs {
    /// Write podshaper.1 and one page per command (podshaper-attach.1, ...)
    /// into this directory instead of printing podshaper.1 on stdout.
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
}

pub fn completions(args: CompletionsArgs, mut cmd: Command) -> anyhow::Result<ExitCode> {
    let name = cmd.get_name().to_string();
    clap_complete::generate(args.shell, &mut cmd, name, &mut std::io::stdout());
    Ok(ExitCode::SUCCESS)
}

pub fn man(args: ManArgs, cmd: Command) -> anyhow::Result<ExitCode> {
    let Some(dir) = args.dir else {
        let mut out = Vec::new();
        clap_mangen::Man::new(cmd)
            .render(&mut out)
            .context("rendering the manual page")?;
        std::io::stdout()
            .write_all(&out)
            .context("writing the manual page")?;
        return Ok(ExitCode::SUCCESS);
    };
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    for (file, page) in pages(cmd) {
        let path = dir.join(file);
        let mut out = Vec::new();
        clap_mangen::Man::new(page)
            .render(&mut out)
            .with_context(|| format!("rendering {}", path.display()))?;
        fs::write(&path, out).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(ExitCode::SUCCESS)
}

/// The top-level page and one per visible command (not `help`), each with
/// its file name (`podshaper.1`, `podshaper-attach.1`, ...).
fn pages(mut cmd: Command) -> Vec<(String, Command)> {
    cmd.build();
    let name = cmd.get_name().to_string();
    let mut pages = vec![(format!("{name}.1"), cmd.clone())];
    // `build` named each command for its page: "podshaper-attach", and
    // "podshaper attach" in its synopsis
    for sub in cmd
        .get_subcommands()
        .filter(|s| !s.is_hide_set() && s.get_name() != "help")
    {
        let full = sub
            .get_display_name()
            .map_or_else(|| format!("{name}-{}", sub.get_name()), str::to_string);
        pages.push((format!("{full}.1"), sub.clone()));
    }
    pages
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cli() -> Command {
        Command::new("podshaper")
            .about("test")
            .subcommand(Command::new("attach").about("limit"))
            .subcommand(Command::new("traffic").hide(true))
    }

    #[test]
    fn every_visible_command_gets_a_page_and_hidden_ones_and_help_none() {
        let names: Vec<String> = pages(cli()).into_iter().map(|(f, _)| f).collect();
        assert_eq!(names, ["podshaper.1", "podshaper-attach.1"]);
    }
}
