//! Tokenizer and parser, following oslo.policy's `_parser.py`: the rule is split on
//! whitespace; leading `(` and trailing `)` of each piece are parentheses; `and`, `or`,
//! `not` are operators in any case; a piece quoted at both ends is a string; anything
//! else is a check. `not` binds tightest, then `and`, then `or`.

use super::check::Check;
use super::error::{ParseError, ParseErrorKind};

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Open,
    Close,
    And,
    Or,
    Not,
    Str(String),
    Check(Check),
}

struct Token {
    tok: Tok,
    at: usize,
    text: String,
}

pub(crate) fn parse(text: &str, strict: bool) -> Result<Check, ParseError> {
    let err = |position: usize, kind: ParseErrorKind| ParseError {
        text: text.to_owned(),
        position,
        kind,
    };
    let tokens = tokenize(text, strict).map_err(|(at, kind)| err(at, kind))?;
    if tokens.is_empty() {
        return Ok(Check::True);
    }
    let mut parser = Parser { tokens, pos: 0 };
    let check = parser.or_expr().map_err(|(at, kind)| err(at, kind))?;
    if let Some(extra) = parser.tokens.get(parser.pos) {
        let kind = match &extra.tok {
            Tok::Close => ParseErrorKind::Unexpected(")".to_owned()),
            _ => ParseErrorKind::Unexpected(extra.text.clone()),
        };
        return Err(err(extra.at, kind));
    }
    Ok(check)
}

type PResult<T> = Result<T, (usize, ParseErrorKind)>;

fn tokenize(text: &str, strict: bool) -> PResult<Vec<Token>> {
    let mut out = Vec::new();
    for (start, piece) in pieces(text) {
        let clean = piece.trim_start_matches('(');
        let opens = piece.len() - clean.len();
        for i in 0..opens {
            out.push(Token {
                tok: Tok::Open,
                at: start + i,
                text: "(".to_owned(),
            });
        }
        if clean.is_empty() {
            continue;
        }
        let tok_start = start + opens;
        let inner = clean.trim_end_matches(')');
        let closes = clean.len() - inner.len();
        let lowered = inner.to_lowercase();
        match lowered.as_str() {
            "and" => out.push(token(Tok::And, tok_start, inner)),
            "or" => out.push(token(Tok::Or, tok_start, inner)),
            "not" => out.push(token(Tok::Not, tok_start, inner)),
            _ if !inner.is_empty() => {
                let quoted = clean.len() >= 2
                    && ((clean.starts_with('"') && clean.ends_with('"'))
                        || (clean.starts_with('\'') && clean.ends_with('\'')));
                if quoted {
                    let s = clean[1..clean.len() - 1].to_owned();
                    out.push(token(Tok::Str(s), tok_start, clean));
                } else {
                    let check = atom(inner, strict).map_err(|kind| (tok_start, kind))?;
                    out.push(token(Tok::Check(check), tok_start, inner));
                }
            }
            _ => {}
        }
        for i in 0..closes {
            out.push(Token {
                tok: Tok::Close,
                at: tok_start + inner.len() + i,
                text: ")".to_owned(),
            });
        }
    }
    Ok(out)
}

/// The runs of non-whitespace characters, with their byte offsets (Python's
/// `re.split(r"\s+", rule)` without the empty pieces).
fn pieces(text: &str) -> Vec<(usize, &str)> {
    let mut out = Vec::new();
    let mut start = None;
    for (i, c) in text.char_indices() {
        match (c.is_whitespace(), start) {
            (true, Some(s)) => {
                out.push((s, &text[s..i]));
                start = None;
            }
            (false, None) => start = Some(i),
            _ => {}
        }
    }
    if let Some(s) = start {
        out.push((s, &text[s..]));
    }
    out
}

fn token(tok: Tok, at: usize, text: &str) -> Token {
    Token {
        tok,
        at,
        text: text.to_owned(),
    }
}

/// oslo.policy's `_parse_check` for one atom.
fn atom(text: &str, strict: bool) -> Result<Check, ParseErrorKind> {
    match text {
        "!" => return Ok(Check::False),
        "@" => return Ok(Check::True),
        _ => {}
    }
    let Some((kind, matcher)) = text.split_once(':') else {
        return if strict {
            Err(ParseErrorKind::NoKind(text.to_owned()))
        } else {
            Ok(Check::False)
        };
    };
    let matcher = matcher.to_owned();
    Ok(match kind {
        "rule" => Check::Rule(matcher),
        "role" => Check::Role(matcher),
        "http" | "https" if strict => return Err(ParseErrorKind::Remote(kind.to_owned())),
        "http" | "https" => Check::False,
        _ => match python_literal(kind) {
            Some(value) => Check::Literal { value, matcher },
            None => Check::Generic {
                path: kind.split('.').map(str::to_owned).collect(),
                matcher,
            },
        },
    })
}

/// `str(ast.literal_eval(kind))` for the literals policy files use: `True`, `False`,
/// `None`, integers, and quoted strings. `None` when `kind` is not such a literal.
fn python_literal(kind: &str) -> Option<String> {
    match kind {
        "True" | "False" | "None" => return Some(kind.to_owned()),
        _ => {}
    }
    let bytes = kind.as_bytes();
    if bytes.len() >= 2 {
        let (first, last) = (bytes[0], bytes[bytes.len() - 1]);
        if (first == b'\'' || first == b'"') && first == last {
            let inner = &kind[1..kind.len() - 1];
            if !inner.contains(first as char) && !inner.contains('\\') {
                return Some(inner.to_owned());
            }
        }
    }
    let digits = kind.strip_prefix(['-', '+']).unwrap_or(kind);
    if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
        if let Ok(n) = kind.parse::<i128>() {
            return Some(n.to_string());
        }
    }
    None
}

struct Parser {
    tokens: Vec<Token>,
    pos: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Tok> {
        self.tokens.get(self.pos).map(|t| &t.tok)
    }

    fn or_expr(&mut self) -> PResult<Check> {
        let mut items = vec![self.and_expr()?];
        while self.peek() == Some(&Tok::Or) {
            self.pos += 1;
            items.push(self.and_expr()?);
        }
        Ok(if items.len() == 1 {
            items.remove(0)
        } else {
            Check::Or(items)
        })
    }

    fn and_expr(&mut self) -> PResult<Check> {
        let mut items = vec![self.unary()?];
        while self.peek() == Some(&Tok::And) {
            self.pos += 1;
            items.push(self.unary()?);
        }
        Ok(if items.len() == 1 {
            items.remove(0)
        } else {
            Check::And(items)
        })
    }

    fn unary(&mut self) -> PResult<Check> {
        let Some(token) = self.tokens.get(self.pos) else {
            return Err((self.end(), ParseErrorKind::UnexpectedEnd));
        };
        let at = token.at;
        match &token.tok {
            Tok::Not => {
                self.pos += 1;
                Ok(Check::Not(Box::new(self.unary()?)))
            }
            Tok::Open => {
                self.pos += 1;
                let inner = self.or_expr()?;
                match self.peek() {
                    Some(Tok::Close) => {
                        self.pos += 1;
                        Ok(inner)
                    }
                    Some(_) => {
                        let t = &self.tokens[self.pos];
                        Err((t.at, ParseErrorKind::Unexpected(t.text.clone())))
                    }
                    None => Err((at, ParseErrorKind::Unclosed)),
                }
            }
            Tok::Check(check) => {
                let check = check.clone();
                self.pos += 1;
                Ok(check)
            }
            Tok::Str(s) => Err((at, ParseErrorKind::StringLiteral(s.clone()))),
            Tok::Close | Tok::And | Tok::Or => {
                Err((at, ParseErrorKind::Unexpected(token.text.clone())))
            }
        }
    }

    fn end(&self) -> usize {
        self.tokens.last().map_or(0, |t| t.at + t.text.len())
    }
}
