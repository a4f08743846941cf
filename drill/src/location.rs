//! Where in a TOML file a key is written, so every error names `FILE:LINE: KEY`: used for
//! drill scenarios and, through `quartet::config`, for Quartet's own config (one locator).

use std::fmt;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Seg {
    Key(String),
    Index(usize),
}

/// A key path, shown as `load[0].request.path` or `expect[2].window`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeyPath(pub Vec<Seg>);

impl KeyPath {
    pub fn key(mut self, k: impl Into<String>) -> Self {
        self.0.push(Seg::Key(k.into()));
        self
    }
    pub fn index(mut self, i: usize) -> Self {
        self.0.push(Seg::Index(i));
        self
    }
    /// Appends a dotted relative key such as `retry.budget`.
    pub fn dotted(mut self, rel: &str) -> Self {
        self.0.extend(
            rel.split('.')
                .filter(|s| !s.is_empty())
                .map(|s| Seg::Key(s.into())),
        );
        self
    }
    pub fn root(k: &str) -> Self {
        Self::default().key(k)
    }
}

impl fmt::Display for KeyPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (n, seg) in self.0.iter().enumerate() {
            match seg {
                Seg::Key(k) => {
                    if n > 0 {
                        f.write_str(".")?;
                    }
                    let bare = !k.is_empty()
                        && k.chars()
                            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
                    if bare {
                        f.write_str(k)?;
                    } else {
                        write!(f, "{k:?}")?;
                    }
                }
                Seg::Index(i) => write!(f, "[{i}]")?,
            }
        }
        Ok(())
    }
}

/// The 1-based line of byte `offset` in `src`.
pub fn line_of(src: &str, offset: usize) -> usize {
    let end = offset.min(src.len());
    src.as_bytes()[..end]
        .iter()
        .filter(|b| **b == b'\n')
        .count()
        + 1
}

/// The line of the deepest part of `path` written in `src` (the key itself when it is
/// there, else the nearest table that holds it).
pub fn locate(src: &str, path: &KeyPath) -> Option<usize> {
    use toml_edit::{ImDocument, Item, TableLike, Value};
    let doc = ImDocument::parse(src).ok()?;

    enum Node<'a> {
        Item(&'a Item),
        Table(&'a toml_edit::Table),
        Value(&'a Value),
    }

    let mut node = Node::Item(doc.as_item());
    let mut best: Option<usize> = None;
    for seg in &path.0 {
        match seg {
            Seg::Key(k) => {
                let table: Option<&dyn TableLike> = match &node {
                    Node::Item(i) => i.as_table_like(),
                    Node::Table(t) => Some(*t),
                    Node::Value(v) => v.as_inline_table().map(|t| t as &dyn TableLike),
                };
                let Some((key, item)) = table.and_then(|t| t.get_key_value(k)) else {
                    break;
                };
                best = key.span().or_else(|| item.span()).map(|s| s.start).or(best);
                node = Node::Item(item);
            }
            Seg::Index(i) => {
                let next = match &node {
                    Node::Item(Item::ArrayOfTables(a)) => {
                        a.get(*i).map(|t| (t.span(), Node::Table(t)))
                    }
                    Node::Item(Item::Value(Value::Array(a))) | Node::Value(Value::Array(a)) => {
                        a.get(*i).map(|v| (v.span(), Node::Value(v)))
                    }
                    _ => None,
                };
                let Some((span, next)) = next else { break };
                best = span.map(|s| s.start).or(best);
                node = next;
            }
        }
    }
    best.map(|o| line_of(src, o))
}

/// The key path of the key or value written at byte `offset` of `src`.
pub fn key_at(src: &str, offset: usize) -> Option<KeyPath> {
    use toml_edit::{ImDocument, Item, TableLike, Value};
    let doc = ImDocument::parse(src).ok()?;

    fn hit(span: Option<std::ops::Range<usize>>, offset: usize) -> bool {
        span.is_some_and(|s| s.start <= offset && offset < s.end.max(s.start + 1))
    }

    fn in_table(t: &dyn TableLike, offset: usize, path: &mut Vec<Seg>) -> bool {
        for (k, _) in t.iter() {
            let Some((key, item)) = t.get_key_value(k) else {
                continue;
            };
            path.push(Seg::Key(k.to_string()));
            if in_item(item, offset, path) || hit(key.span(), offset) || hit(item.span(), offset) {
                return true;
            }
            path.pop();
        }
        false
    }

    fn in_value(v: &Value, offset: usize, path: &mut Vec<Seg>) -> bool {
        match v {
            Value::InlineTable(t) => in_table(t, offset, path),
            Value::Array(a) => {
                for (i, v) in a.iter().enumerate() {
                    path.push(Seg::Index(i));
                    if in_value(v, offset, path) || hit(v.span(), offset) {
                        return true;
                    }
                    path.pop();
                }
                false
            }
            _ => false,
        }
    }

    fn in_item(item: &Item, offset: usize, path: &mut Vec<Seg>) -> bool {
        match item {
            Item::Table(t) => in_table(t, offset, path),
            Item::ArrayOfTables(a) => {
                for (i, t) in a.iter().enumerate() {
                    path.push(Seg::Index(i));
                    if in_table(t, offset, path) || hit(t.span(), offset) {
                        return true;
                    }
                    path.pop();
                }
                false
            }
            Item::Value(v) => in_value(v, offset, path),
            Item::None => false,
        }
    }

    let mut path = Vec::new();
    in_item(doc.as_item(), offset, &mut path).then_some(KeyPath(path))
}

// ---------------------------------------------------------------------------------------
// The error of a TOML file a user wrote (a Quartet config, a drill scenario).

/// A value serde accepted but the program cannot use, naming its key.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {message}")]
pub struct Invalid {
    pub path: KeyPath,
    pub message: String,
}

/// An [`Invalid`] at `path`.
pub fn invalid(path: KeyPath, message: impl Into<String>) -> Invalid {
    Invalid {
        path,
        message: message.into(),
    }
}

/// What went wrong with the file.
#[derive(Debug)]
pub enum ErrorKind {
    Read(std::io::Error),
    Syntax(Box<toml::de::Error>),
    Invalid(Invalid),
}

/// A file's error as the user sees it: `FILE:LINE: KEY: message`.
#[derive(Debug)]
pub struct FileError {
    pub file: String,
    pub line: Option<usize>,
    pub key: Option<KeyPath>,
    pub kind: ErrorKind,
}

impl FileError {
    /// An error found in `src` (named `file`) after parsing, at `path`.
    pub fn at(file: &str, src: &str, path: KeyPath, message: impl Into<String>) -> Self {
        FileError {
            file: file.to_string(),
            line: locate(src, &path),
            key: Some(path.clone()),
            kind: ErrorKind::Invalid(invalid(path, message)),
        }
    }
}

impl fmt::Display for FileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.file)?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        if let Some(key) = self.key.as_ref().filter(|k| !k.0.is_empty()) {
            write!(f, ": {key}")?;
        }
        match &self.kind {
            ErrorKind::Read(e) => write!(f, ": cannot read the file: {e}"),
            ErrorKind::Syntax(e) => write!(f, ": {}", e.message().trim_end()),
            ErrorKind::Invalid(e) => write!(f, ": {}", e.message),
        }
    }
}

impl std::error::Error for FileError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match &self.kind {
            ErrorKind::Read(e) => Some(e),
            ErrorKind::Syntax(e) => Some(e.as_ref()),
            ErrorKind::Invalid(e) => Some(e),
        }
    }
}
