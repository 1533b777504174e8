//! Configuration in three layers — a TOML file, then `SHOAL_*` environment variables, then
//! flags — into one serde struct that is written once: its fields carry both the serde
//! names (the file) and the clap flags (with `env = "SHOAL_…"`), its `Default` is the only
//! place defaults live, and the binary validates the result once.
//!
//! The struct derives `clap::Args` without clap default values (fields that are not
//! `Option`/`Vec` say `required = false`), so the parsed matches hold only what the
//! environment or the command line really set; [`Overrides`] keeps those matches and
//! applies them over the file with `FromArgMatches::update_from_arg_matches`. Config-only
//! settings (tables, durations nobody sets per run) are `#[arg(skip)]`. A boolean setting is
//! written `#[arg(long, switch = true)]` (with [`Switch`] in scope): a plain clap flag always
//! holds `false` when absent and would overwrite the file's `true`.

use std::fmt;
use std::marker::PhantomData;
use std::path::Path;

use clap::{ArgMatches, Args, FromArgMatches};
use serde::de::DeserializeOwned;

use crate::Error;

/// Makes a boolean setting a switch that is absent unless given: `--flag` alone means true,
/// `--flag=false` turns off what the file turned on, and variables take the usual
/// true/false/1/0/yes/no. `require_equals` keeps a bare switch from taking the next argument.
pub trait Switch {
    fn switch(self, on: bool) -> Self;
}

impl Switch for clap::Arg {
    fn switch(self, on: bool) -> Self {
        if !on {
            return self;
        }
        self.action(clap::ArgAction::Set)
            .num_args(0..=1)
            .require_equals(true)
            .default_missing_value("true")
            .value_parser(clap::builder::FalseyValueParser::new())
            .required(false)
    }
}

/// Reads a TOML config file; fields left out keep their defaults (the struct's
/// `#[serde(default)]`).
pub fn read_toml<C: DeserializeOwned>(path: &Path) -> Result<C, Error> {
    let text = std::fs::read_to_string(path).map_err(|error| Error::ConfigRead {
        path: path.to_owned(),
        error,
    })?;
    toml::from_str(&text).map_err(|e| Error::ConfigParse {
        path: path.to_owned(),
        message: e.to_string(),
    })
}

/// The environment and flag values of config `C`, as parsed: flatten it into a command
/// (`#[command(flatten)] settings: Overrides<C>`), then [`Overrides::resolve`].
pub struct Overrides<C> {
    matches: ArgMatches,
    config: PhantomData<fn() -> C>,
}

impl<C> Clone for Overrides<C> {
    fn clone(&self) -> Self {
        Overrides {
            matches: self.matches.clone(),
            config: PhantomData,
        }
    }
}

impl<C> fmt::Debug for Overrides<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Overrides")
            .field("matches", &self.matches)
            .finish()
    }
}

impl<C: Args> Args for Overrides<C> {
    fn augment_args(cmd: clap::Command) -> clap::Command {
        C::augment_args(cmd)
    }
    fn augment_args_for_update(cmd: clap::Command) -> clap::Command {
        C::augment_args_for_update(cmd)
    }
}

impl<C> FromArgMatches for Overrides<C> {
    fn from_arg_matches(matches: &ArgMatches) -> Result<Self, clap::Error> {
        Ok(Overrides {
            matches: matches.clone(),
            config: PhantomData,
        })
    }
    fn update_from_arg_matches(&mut self, matches: &ArgMatches) -> Result<(), clap::Error> {
        self.matches = matches.clone();
        Ok(())
    }
}

impl<C: FromArgMatches + DeserializeOwned + Default> Overrides<C> {
    /// `base` with every value the environment or the command line set.
    pub fn apply(&self, mut base: C) -> Result<C, Error> {
        base.update_from_arg_matches(&self.matches)
            .map_err(|e| Error::Flags(e.to_string()))?;
        Ok(base)
    }

    /// The file (or the defaults when there is none), then the environment and flags. Not
    /// validated: that is the config's own business.
    pub fn resolve(&self, file: Option<&Path>) -> Result<C, Error> {
        let base = match file {
            Some(path) => read_toml(path)?,
            None => C::default(),
        };
        self.apply(base)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use clap::Parser;
    use serde::Deserialize;

    use super::*;

    #[derive(Debug, PartialEq, Deserialize, Args)]
    #[serde(default, deny_unknown_fields)]
    struct Demo {
        /// A plain value: the file's stays unless a flag or variable sets it.
        #[arg(long, required = false, env = "SHOAL_RUNTIME_TEST_NAME")]
        name: String,
        #[arg(long, required = false, value_parser = humantime_like)]
        #[serde(skip)]
        wait: Duration,
        #[arg(long = "item")]
        items: Vec<String>,
        #[arg(long)]
        extra: Option<u32>,
        #[arg(skip)]
        file_only: u32,
        #[arg(long, switch = true)]
        on: bool,
    }

    fn humantime_like(s: &str) -> Result<Duration, String> {
        s.strip_suffix('s')
            .and_then(|n| n.parse().ok())
            .map(Duration::from_secs)
            .ok_or_else(|| format!("{s}: not N s"))
    }

    impl Default for Demo {
        fn default() -> Self {
            Demo {
                name: "default".into(),
                wait: Duration::from_secs(1),
                items: vec!["a".into()],
                extra: None,
                file_only: 5,
                on: false,
            }
        }
    }

    #[derive(Parser)]
    struct Cli {
        #[arg(long)]
        config: Option<std::path::PathBuf>,
        #[command(flatten)]
        settings: Overrides<Demo>,
    }

    #[test]
    fn file_then_environment_then_flags() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        std::fs::write(
            &file,
            "name = \"file\"\nitems = [\"f\"]\nfile_only = 9\non = true\n",
        )
        .unwrap();
        let f = file.to_str().unwrap();

        let cli = Cli::try_parse_from(["x", "--config", f]).unwrap();
        let c = cli.settings.resolve(cli.config.as_deref()).unwrap();
        assert_eq!((c.name.as_str(), c.file_only), ("file", 9));
        assert_eq!(c.items, ["f"]);
        assert_eq!(c.wait, Duration::from_secs(1));
        assert!(c.on, "an absent switch keeps the file's value");
        let cli = Cli::try_parse_from(["x", "--config", f, "--on=false"]).unwrap();
        assert!(!cli.settings.resolve(cli.config.as_deref()).unwrap().on);
        let cli = Cli::try_parse_from(["x", "--on"]).unwrap();
        assert!(cli.settings.resolve(None).unwrap().on);

        let cli = Cli::try_parse_from([
            "x", "--config", f, "--item", "1", "--item", "2", "--wait", "7s",
        ])
        .unwrap();
        let c = cli.settings.resolve(cli.config.as_deref()).unwrap();
        assert_eq!(c.items, ["1", "2"]);
        assert_eq!(c.wait, Duration::from_secs(7));
        assert_eq!((c.name.as_str(), c.extra), ("file", None));

        std::env::set_var("SHOAL_RUNTIME_TEST_NAME", "env");
        let cli = Cli::try_parse_from(["x", "--config", f]).unwrap();
        let from_env = cli.settings.resolve(cli.config.as_deref()).unwrap();
        let cli = Cli::try_parse_from(["x", "--name", "flag", "--extra", "3"]).unwrap();
        let from_flag = cli.settings.resolve(None).unwrap();
        std::env::remove_var("SHOAL_RUNTIME_TEST_NAME");
        assert_eq!(from_env.name, "env");
        assert_eq!(
            (from_flag.name.as_str(), from_flag.extra),
            ("flag", Some(3))
        );
        assert_eq!(from_flag.file_only, 5);
    }

    #[test]
    fn file_errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("bad.toml");
        std::fs::write(&file, "nmae = 1\n").unwrap();
        let e = read_toml::<Demo>(&file).unwrap_err().to_string();
        assert!(e.contains("bad.toml") && e.contains("nmae"), "{e}");
        let e = read_toml::<Demo>(&dir.path().join("missing.toml")).unwrap_err();
        assert!(matches!(e, Error::ConfigRead { .. }), "{e}");
    }
}
