//! The errors of one configuration as checking finds them, each at its file, line and key.

use super::{ConfigError, Source};
use crate::policy::catalog::LineError;
use crate::text::line_of;

pub struct Errors<'a> {
    pub src: &'a Source,
    pub list: Vec<ConfigError>,
}

impl Errors<'_> {
    /// `msg` is a message or a typed error, as its `Display` says it.
    pub fn at(
        &mut self,
        span: Option<std::ops::Range<usize>>,
        key: impl AsRef<str>,
        msg: impl std::fmt::Display,
    ) {
        let line = span.map(|s| line_of(&self.src.text, s.start));
        self.list.push(ConfigError::new(&self.src.name, line, key.as_ref(), msg.to_string()));
    }

    /// A table's (catalog, expansions) errors, at the table's own lines.
    pub fn table(&mut self, name: &str, lines: Vec<LineError>) {
        for l in lines {
            self.list.push(ConfigError::new(std::path::Path::new(name), Some(l.line), "", l.message));
        }
    }
}
