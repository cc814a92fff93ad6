//! selector: Calico's label selector language, parsed once and matched often.
//!
//! Takes: selector text as written in `projectcalico.org/v3` resources (a policy's `selector`,
//! a rule's `selector` / `namespaceSelector` / `serviceAccounts.selector`, what selects a
//! NetworkSet) and, for matching, an endpoint's labels through [`Labels`]. Gives: a
//! [`Selector`] (a small immutable AST behind an `Arc`) that answers [`Selector::matches`], and
//! prints a canonical form (Calico's own `String()` form) that parses back to an equal selector;
//! or a [`SelectorError`] with the byte offset and the reason. Must never: panic on any input,
//! allocate while matching, or decide what `global()` means for namespaces (callers do, through
//! [`Selector::is_global`]).
//!
//! Grammar (whitespace — space, tab, CR, LF — is allowed between any two tokens):
//!
//! ```text
//! selector  := ε | or
//! or        := and ( "||" and )*                  // `&&` binds tighter than `||`
//! and       := unary ( "&&" unary )*
//! unary     := "!"* primary                       // `!!x` is `x`
//! primary   := "(" or ")" | "all()" | "global()" | "has(" key ")" | key op
//! op        := ("==" | "!=" | "contains" | "starts with" | "ends with") value
//!            | ("in" | "not in") "{" [ value ( "," value )* [","] ] "}"
//! key       := [A-Za-z0-9] [A-Za-z0-9._/-]*      // e.g. `projectcalico.org/namespace`
//! value     := "'" (not ')* "'" | '"' (not ")* '"' // no escapes
//! ```
//!
//! Semantics, as in Calico's `libcalico-go/lib/selector`: `k == v`, `k in {..}`, `contains`,
//! `starts with`, `ends with` and `has(k)` are false when `k` is absent; `k != v` and
//! `k not in {..}` are true when it is absent; `k in {}` never matches; comparisons are exact and
//! case-sensitive. The empty selector is `all()`. `global()` matches every label set: in a
//! `namespaceSelector` Calico uses it to mean "non-namespaced endpoints", which the caller applies
//! by checking [`Selector::is_global`].
//!
//! Accepted beyond the canonical spelling, because Calico's tokenizer accepts them too:
//! `notin`, `startswith`, `endswith` (no space between the words), a trailing comma in a set, and
//! whitespace inside `has( k )`, `all( )`, `global( )`. Also accepted, unlike Calico: whitespace
//! between a function name and its `(`, and CR/LF as whitespace (YAML block scalars). Refused,
//! unlike Calico: keys that start with `.`, `_`, `/` or `-` (no Kubernetes label key does).

use std::{
    collections::{BTreeMap, HashMap},
    fmt,
    hash::BuildHasher,
    str::FromStr,
    sync::Arc,
};

/// Deepest nesting of parentheses accepted; deeper input is an error, not a stack overflow.
const MAX_NESTING: usize = 64;

/// The operators listed in errors that expect one.
const OPERATORS: &str = "`==`, `!=`, `in`, `not in`, `contains`, `starts with` or `ends with`";

/// A parsed selector; cheap to clone; `Display` prints a canonical form that parses back to an
/// equal selector.
///
/// Equality is structural on the parsed form: parentheses, whitespace, quote style, double
/// negation and the order or repetition of values in a set do not matter, but the order and
/// grouping of `&&` / `||` operands do (`a && b` is not equal to `b && a`).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Selector {
    root: Arc<Node>,
}

/// Why a selector did not parse: byte offset in the input and a human reason (e.g. "expected a
/// quoted value after `==`").
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("at {position}: {reason}")]
pub struct SelectorError {
    /// Byte offset in the input where the problem was found (the input's length: at its end).
    pub position: usize,
    /// What was expected or what is wrong, in words.
    pub reason: String,
}

/// Label source for matching: an endpoint's labels, looked up by key.
pub trait Labels {
    /// The value of label `key`, or `None` when the endpoint does not have that label.
    fn label(&self, key: &str) -> Option<&str>;
}

impl Labels for BTreeMap<String, String> {
    fn label(&self, key: &str) -> Option<&str> {
        self.get(key).map(String::as_str)
    }
}

/// A namespace's labels as Calico namespace selectors see them: its labels plus
/// `projectcalico.org/name`.
pub struct NamespaceLabels<'a> {
    /// The namespace's name.
    pub name: &'a str,
    /// Its labels.
    pub labels: &'a BTreeMap<String, String>,
}

impl Labels for NamespaceLabels<'_> {
    fn label(&self, key: &str) -> Option<&str> {
        match key {
            "projectcalico.org/name" => Some(self.name),
            _ => self.labels.get(key).map(String::as_str),
        }
    }
}

/// Whether `labels` satisfy a Kubernetes label selector (`matchLabels` and `matchExpressions`;
/// an empty selector matches everything, an unknown operator nothing).
pub fn label_selector_matches(
    selector: &k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector,
    labels: &BTreeMap<String, String>,
) -> bool {
    let exprs_ok = selector.match_expressions.iter().flatten().all(|expr| {
        let value = labels.get(&expr.key);
        let values = expr.values.as_deref().unwrap_or_default();
        match expr.operator.as_str() {
            "In" => value.is_some_and(|v| values.contains(v)),
            "NotIn" => value.is_none_or(|v| !values.contains(v)),
            "Exists" => value.is_some(),
            "DoesNotExist" => value.is_none(),
            _ => false,
        }
    });
    exprs_ok && selector.match_labels.iter().flatten().all(|(k, v)| labels.get(k) == Some(v))
}

impl<S: BuildHasher> Labels for HashMap<String, String, S> {
    fn label(&self, key: &str) -> Option<&str> {
        self.get(key).map(String::as_str)
    }
}

impl Selector {
    /// Parses selector text; `""` and whitespace-only text parse to [`Selector::all`].
    pub fn parse(text: &str) -> Result<Selector, SelectorError> {
        let mut parser = Parser { text, bytes: text.as_bytes(), pos: 0, depth: 0 };
        parser.skip_ws();
        if parser.at_end() {
            return Ok(Selector::all());
        }
        let root = parser.parse_or(None)?;
        parser.skip_ws();
        if !parser.at_end() {
            return Err(parser.after_expression_error(None));
        }
        Ok(Selector { root: Arc::new(root) })
    }

    /// The selector that matches every endpoint, `all()`.
    pub fn all() -> Selector {
        Selector { root: Arc::new(Node::All) }
    }

    /// Whether an endpoint with these labels is selected. `global()` anywhere counts as true
    /// here; see [`Selector::is_global`]. Does not allocate.
    pub fn matches<L: Labels + ?Sized>(&self, labels: &L) -> bool {
        self.root.matches(labels)
    }

    /// True when the selector is exactly `all()` (including `""`, `(all())` and `!!all()`).
    pub fn is_all(&self) -> bool {
        matches!(*self.root, Node::All)
    }

    /// True when the selector is exactly `global()` (up to whitespace, parentheses and double
    /// negation). In a `namespaceSelector` Calico reads it as "endpoints that are not in any
    /// namespace" (host endpoints, global network sets); applying that is the caller's job.
    pub fn is_global(&self) -> bool {
        matches!(*self.root, Node::Global)
    }
}

impl FromStr for Selector {
    type Err = SelectorError;

    fn from_str(text: &str) -> Result<Selector, SelectorError> {
        Selector::parse(text)
    }
}

impl fmt::Display for Selector {
    /// Calico's canonical form: `&&` / `||` groups in parentheses, values in double quotes unless
    /// they contain one, sets sorted without duplicates, e.g. `(a == "x" || !has(b))`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.root)
    }
}

/// The parsed form. Keys and values are boxed once at parse time; matching only borrows.
#[derive(Debug, PartialEq, Eq, Hash)]
enum Node {
    All,
    Global,
    Has(Box<str>),
    Compare {
        key: Box<str>,
        op: CompareOp,
        value: Box<str>,
    },
    /// `values` is sorted and has no duplicates (binary search while matching).
    InSet {
        key: Box<str>,
        negated: bool,
        values: Box<[Box<str>]>,
    },
    /// Never holds another `Not` (see [`Node::negate`]).
    Not(Box<Node>),
    /// Two or more operands.
    And(Vec<Node>),
    /// Two or more operands.
    Or(Vec<Node>),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum CompareOp {
    Eq,
    Ne,
    Contains,
    StartsWith,
    EndsWith,
}

impl CompareOp {
    fn symbol(self) -> &'static str {
        match self {
            CompareOp::Eq => "==",
            CompareOp::Ne => "!=",
            CompareOp::Contains => "contains",
            CompareOp::StartsWith => "starts with",
            CompareOp::EndsWith => "ends with",
        }
    }
}

impl Node {
    fn matches<L: Labels + ?Sized>(&self, labels: &L) -> bool {
        match self {
            Node::All | Node::Global => true,
            Node::Has(key) => labels.label(key).is_some(),
            Node::Compare { key, op, value } => match labels.label(key) {
                None => *op == CompareOp::Ne,
                Some(actual) => match op {
                    CompareOp::Eq => actual == &**value,
                    CompareOp::Ne => actual != &**value,
                    CompareOp::Contains => actual.contains(&**value),
                    CompareOp::StartsWith => actual.starts_with(&**value),
                    CompareOp::EndsWith => actual.ends_with(&**value),
                },
            },
            Node::InSet { key, negated, values } => match labels.label(key) {
                None => *negated,
                Some(actual) => values.binary_search_by(|v| (**v).cmp(actual)).is_ok() != *negated,
            },
            Node::Not(inner) => !inner.matches(labels),
            Node::And(operands) => operands.iter().all(|n| n.matches(labels)),
            Node::Or(operands) => operands.iter().any(|n| n.matches(labels)),
        }
    }

    /// `!self`, folding double negation so that the printed form (`!!x` reads back as `x`)
    /// always parses to the same tree.
    fn negate(self) -> Node {
        match self {
            Node::Not(inner) => *inner,
            other => Node::Not(Box::new(other)),
        }
    }
}

impl fmt::Display for Node {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Node::All => f.write_str("all()"),
            Node::Global => f.write_str("global()"),
            Node::Has(key) => write!(f, "has({key})"),
            Node::Compare { key, op, value } => {
                write!(f, "{key} {} ", op.symbol())?;
                write_quoted(f, value)
            }
            Node::InSet { key, negated, values } => {
                write!(f, "{key} {} {{", if *negated { "not in" } else { "in" })?;
                for (i, value) in values.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write_quoted(f, value)?;
                }
                f.write_str("}")
            }
            Node::Not(inner) => write!(f, "!{inner}"),
            Node::And(operands) => write_group(f, operands, " && "),
            Node::Or(operands) => write_group(f, operands, " || "),
        }
    }
}

/// A value can't hold both quote kinds (there are no escapes), so one of them always works.
fn write_quoted(f: &mut fmt::Formatter<'_>, value: &str) -> fmt::Result {
    let quote = if value.contains('"') { '\'' } else { '"' };
    write!(f, "{quote}{value}{quote}")
}

fn write_group(f: &mut fmt::Formatter<'_>, operands: &[Node], separator: &str) -> fmt::Result {
    f.write_str("(")?;
    for (i, operand) in operands.iter().enumerate() {
        if i > 0 {
            f.write_str(separator)?;
        }
        write!(f, "{operand}")?;
    }
    f.write_str(")")
}

fn is_key_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'/' | b'-')
}

/// Recursive descent over the bytes of `text`. `pos` only ever moves over ASCII bytes or over a
/// whole quoted value (which ends on an ASCII quote), so it is always a char boundary of `text`.
struct Parser<'a> {
    text: &'a str,
    bytes: &'a [u8],
    pos: usize,
    depth: usize,
}

impl<'a> Parser<'a> {
    fn at_end(&self) -> bool {
        self.pos >= self.bytes.len()
    }

    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.pos).copied()
    }

    fn rest(&self) -> &'a [u8] {
        self.bytes.get(self.pos..).unwrap_or_default()
    }

    fn skip_ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\r' | b'\n')) {
            self.pos += 1;
        }
    }

    /// Consumes a run of key bytes (possibly empty) and returns it.
    fn word(&mut self) -> &'a str {
        let start = self.pos;
        while self.peek().is_some_and(is_key_byte) {
            self.pos += 1;
        }
        self.text.get(start..self.pos).unwrap_or_default()
    }

    fn error(&self, position: usize, reason: impl Into<String>) -> SelectorError {
        SelectorError { position, reason: reason.into() }
    }

    /// Names what is at `at` for an error message: a word, a two-character operator, a
    /// character, or the end.
    fn found(&self, at: usize) -> String {
        let rest = self.text.get(at..).unwrap_or_default();
        let Some(c) = rest.chars().next() else {
            return "the end of the selector".to_owned();
        };
        let run = rest.bytes().take_while(|&b| is_key_byte(b)).count();
        if run > 0 {
            format!("`{}`", &rest[..run])
        } else if ["&&", "||", "==", "!="].iter().any(|op| rest.starts_with(op)) {
            format!("`{}`", &rest[..2])
        } else if c.is_control() || c.is_whitespace() {
            format!("{c:?}")
        } else {
            format!("`{c}`")
        }
    }

    /// The error for whatever follows a complete expression that is not `&&`, `||`, the end
    /// (top level, `open` is `None`) or the `)` closing the `(` at `open`.
    fn after_expression_error(&self, open: Option<usize>) -> SelectorError {
        let at = self.pos;
        let reason = match (self.rest(), open) {
            ([], Some(open)) => format!("expected `)` to close the `(` at {open}"),
            ([b')', ..], None) => "unexpected `)` with no matching `(`".to_owned(),
            ([b'&', ..], _) => "expected `&&`; a single `&` is not an operator".to_owned(),
            ([b'|', ..], _) => "expected `||`; a single `|` is not an operator".to_owned(),
            (_, Some(_)) => {
                format!("expected `&&`, `||` or `)` after an expression, found {}", self.found(at))
            }
            (_, None) => {
                format!("expected `&&`, `||` or the end of the selector after an expression, found {}", self.found(at))
            }
        };
        self.error(at, reason)
    }

    /// Skips whitespace, then consumes `token` if it comes next.
    fn eat(&mut self, token: &[u8]) -> bool {
        self.skip_ws();
        let found = self.rest().starts_with(token);
        if found {
            self.pos += token.len();
        }
        found
    }

    /// `after` names the token before the expression, for errors ("after `&&`").
    fn parse_or(&mut self, after: Option<&str>) -> Result<Node, SelectorError> {
        let first = self.parse_and(after)?;
        if !self.eat(b"||") {
            return Ok(first);
        }
        let mut operands = vec![first];
        loop {
            operands.push(self.parse_and(Some("`||`"))?);
            if !self.eat(b"||") {
                return Ok(Node::Or(operands));
            }
        }
    }

    fn parse_and(&mut self, after: Option<&str>) -> Result<Node, SelectorError> {
        let first = self.parse_unary(after)?;
        if !self.eat(b"&&") {
            return Ok(first);
        }
        let mut operands = vec![first];
        loop {
            operands.push(self.parse_unary(Some("`&&`"))?);
            if !self.eat(b"&&") {
                return Ok(Node::And(operands));
            }
        }
    }

    fn parse_unary(&mut self, mut after: Option<&str>) -> Result<Node, SelectorError> {
        let mut negated = false;
        loop {
            self.skip_ws();
            // `!=` is an operator, never a negation; leave it for the error in parse_primary.
            if self.peek() == Some(b'!') && self.bytes.get(self.pos + 1) != Some(&b'=') {
                self.pos += 1;
                negated = !negated;
                after = Some("`!`");
            } else {
                break;
            }
        }
        let node = self.parse_primary(after)?;
        Ok(if negated { node.negate() } else { node })
    }

    fn parse_primary(&mut self, after: Option<&str>) -> Result<Node, SelectorError> {
        self.skip_ws();
        let start = self.pos;
        let after = after.map(|token| format!(" after {token}")).unwrap_or_default();
        match self.peek() {
            Some(b'(') => {
                if self.depth >= MAX_NESTING {
                    return Err(self.error(start, format!("parentheses nested deeper than {MAX_NESTING} levels")));
                }
                self.pos += 1;
                self.depth += 1;
                let node = self.parse_or(Some("`(`"))?;
                self.skip_ws();
                if self.peek() != Some(b')') {
                    return Err(self.after_expression_error(Some(start)));
                }
                self.pos += 1;
                self.depth -= 1;
                Ok(node)
            }
            Some(b) if b.is_ascii_alphanumeric() => {
                let word = self.word();
                self.skip_ws();
                if self.peek() == Some(b'(') {
                    self.pos += 1;
                    self.parse_function(word, start)
                } else {
                    self.parse_operation(word)
                }
            }
            Some(b) if is_key_byte(b) => {
                Err(self.error(start, format!("a label key must start with a letter or digit, found `{}`", b as char)))
            }
            Some(b'\'' | b'"') => Err(self.error(
                start,
                format!(
                    "expected an expression{after}, found a quoted value \
                     (a value must follow a label key and an operator)"
                ),
            )),
            _ => Err(self.error(start, format!("expected an expression{after}, found {}", self.found(start)))),
        }
    }

    /// After `name(`; `start` is where `name` began.
    fn parse_function(&mut self, name: &str, start: usize) -> Result<Node, SelectorError> {
        let node = match name {
            "has" => {
                self.skip_ws();
                let key = self.key("inside `has(`")?;
                Node::Has(key.into())
            }
            "all" => Node::All,
            "global" => Node::Global,
            _ => {
                return Err(
                    self.error(start, format!("unknown function `{name}`; expected `has(key)`, `all()` or `global()`"))
                );
            }
        };
        self.skip_ws();
        if self.peek() != Some(b')') {
            let reason = if name == "has" {
                format!("expected `)` to close `has(`, found {}", self.found(self.pos))
            } else {
                format!("`{name}()` takes no arguments; expected `)`, found {}", self.found(self.pos))
            };
            return Err(self.error(self.pos, reason));
        }
        self.pos += 1;
        Ok(node)
    }

    /// A label key at the current position; `context` says where one was expected.
    fn key(&mut self, context: &str) -> Result<&'a str, SelectorError> {
        match self.peek() {
            Some(b) if b.is_ascii_alphanumeric() => Ok(self.word()),
            Some(b) if is_key_byte(b) => {
                Err(self
                    .error(self.pos, format!("a label key must start with a letter or digit, found `{}`", b as char)))
            }
            _ => Err(self.error(self.pos, format!("expected a label key {context}, found {}", self.found(self.pos)))),
        }
    }

    /// After a label key: the operator and its operand.
    fn parse_operation(&mut self, key: &str) -> Result<Node, SelectorError> {
        self.skip_ws();
        let op_start = self.pos;
        let rest = self.rest();
        let op = if rest.starts_with(b"==") {
            self.pos += 2;
            CompareOp::Eq
        } else if rest.starts_with(b"!=") {
            self.pos += 2;
            CompareOp::Ne
        } else if rest.first() == Some(&b'=') {
            return Err(self.error(op_start, "expected `==`; a single `=` is not an operator"));
        } else if rest.first().is_some_and(u8::is_ascii_alphabetic) {
            match self.word() {
                "in" => return self.parse_set(key, false),
                "notin" => return self.parse_set(key, true),
                "not" => {
                    self.second_word("not", "in")?;
                    return self.parse_set(key, true);
                }
                "contains" => CompareOp::Contains,
                "startswith" => CompareOp::StartsWith,
                "starts" => {
                    self.second_word("starts", "with")?;
                    CompareOp::StartsWith
                }
                "endswith" => CompareOp::EndsWith,
                "ends" => {
                    self.second_word("ends", "with")?;
                    CompareOp::EndsWith
                }
                other => {
                    return Err(self.error(
                        op_start,
                        format!("unknown operator `{other}` after label key `{key}`; expected {OPERATORS}"),
                    ));
                }
            }
        } else {
            return Err(self.error(
                op_start,
                format!("expected an operator after label key `{key}` ({OPERATORS}), found {}", self.found(op_start)),
            ));
        };
        self.skip_ws();
        let value = self.quoted(op.symbol())?;
        Ok(Node::Compare { key: key.into(), op, value: value.into() })
    }

    /// The second word of a two-word operator (`not in`, `starts with`, `ends with`).
    fn second_word(&mut self, first: &str, second: &str) -> Result<(), SelectorError> {
        self.skip_ws();
        let at = self.pos;
        if self.word() == second {
            Ok(())
        } else {
            Err(self.error(at, format!("expected `{second}` after `{first}`, found {}", self.found(at))))
        }
    }

    /// A quoted value at the current position; `op` names the operator before it, for errors.
    fn quoted(&mut self, op: &str) -> Result<&'a str, SelectorError> {
        let start = self.pos;
        let Some(quote @ (b'\'' | b'"')) = self.peek() else {
            return Err(self.error(start, format!("expected a quoted value after `{op}`, found {}", self.found(start))));
        };
        let body = start + 1;
        let Some(len) = self.bytes[body..].iter().position(|&b| b == quote) else {
            return Err(
                self.error(start, format!("unterminated string: no closing `{}` for this quote", quote as char))
            );
        };
        self.pos = body + len + 1;
        // Both ends sit next to an ASCII quote, so they are char boundaries.
        Ok(self.text.get(body..body + len).unwrap_or_default())
    }

    /// After `key in` / `key not in`: `{ value, ... }`.
    fn parse_set(&mut self, key: &str, negated: bool) -> Result<Node, SelectorError> {
        let op = if negated { "not in" } else { "in" };
        self.skip_ws();
        let open = self.pos;
        if self.peek() != Some(b'{') {
            return Err(self.error(
                open,
                format!("expected `{{` to start a set of quoted values after `{op}`, found {}", self.found(open)),
            ));
        }
        self.pos += 1;
        let mut values: Vec<Box<str>> = Vec::new();
        loop {
            self.skip_ws();
            match self.peek() {
                Some(b'}') => break,
                Some(b'\'' | b'"') => {
                    values.push(self.quoted(op)?.into());
                    self.skip_ws();
                    match self.peek() {
                        Some(b',') => self.pos += 1,
                        Some(b'}') => break,
                        None => {}
                        Some(_) => {
                            return Err(self.error(
                                self.pos,
                                format!(
                                    "expected `,` or `}}` after a value in the set, found {}",
                                    self.found(self.pos)
                                ),
                            ));
                        }
                    }
                }
                None => {
                    return Err(
                        self.error(self.pos, format!("unterminated set: expected `}}` to close the `{{` at {open}"))
                    );
                }
                Some(_) => {
                    return Err(self.error(
                        self.pos,
                        format!("expected a quoted value or `}}` in the set, found {}", self.found(self.pos)),
                    ));
                }
            }
        }
        self.pos += 1; // the `}`
        values.sort_unstable();
        values.dedup();
        Ok(Node::InSet { key: key.into(), negated, values: values.into_boxed_slice() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    /// (selector, labels as key/value pairs, expected match).
    type MatchCase = (&'static str, &'static [(&'static str, &'static str)], bool);

    const MATCH_CASES: &[MatchCase] = &[
        // all(), empty, global()
        ("all()", &[], true),
        ("all()", &[("app", "web")], true),
        ("", &[("app", "web")], true),
        (" \t\n ", &[], true),
        ("global()", &[], true),
        ("global()", &[("app", "web")], true),
        ("global() && has(app)", &[], false),
        ("all() && !has(app)", &[("app", "web")], false),
        // has
        ("has(app)", &[("app", "web")], true),
        ("has(app)", &[("tier", "web")], false),
        ("has(app)", &[("app", "")], true),
        ("!has(app)", &[], true),
        ("!has(app)", &[("app", "web")], false),
        ("has( app )", &[("app", "web")], true),
        ("has (app)", &[("app", "web")], true),
        // == and !=
        ("app == 'web'", &[("app", "web")], true),
        ("app == \"web\"", &[("app", "web")], true),
        ("app == 'web'", &[("app", "db")], false),
        ("app == 'web'", &[], false),
        ("app == 'Web'", &[("app", "web")], false),
        ("app == ''", &[("app", "")], true),
        ("app == ''", &[], false),
        ("app != 'web'", &[("app", "db")], true),
        ("app != 'web'", &[("app", "web")], false),
        ("app != 'web'", &[], true),
        // in / not in
        ("app in {'web', \"db\"}", &[("app", "db")], true),
        ("app in {'web', \"db\"}", &[("app", "cache")], false),
        ("app in {'web', \"db\"}", &[], false),
        ("app in {}", &[("app", "web")], false),
        ("app in { }", &[], false),
        ("app in {'web',}", &[("app", "web")], true),
        ("app not in {'web', 'db'}", &[("app", "cache")], true),
        ("app not in {'web', 'db'}", &[("app", "web")], false),
        ("app not in {'web'}", &[], true),
        ("app not in {}", &[], true),
        ("app not in {}", &[("app", "web")], true),
        ("app notin {'web'}", &[("app", "web")], false),
        // contains / starts with / ends with
        ("name contains 'ack'", &[("name", "backend")], true),
        ("name contains 'xyz'", &[("name", "backend")], false),
        ("name contains 'ack'", &[], false),
        ("name contains ''", &[("name", "backend")], true),
        ("name starts with 'back'", &[("name", "backend")], true),
        ("name starts with 'end'", &[("name", "backend")], false),
        ("name starts  with 'back'", &[], false),
        ("name startswith 'back'", &[("name", "backend")], true),
        ("name ends with 'end'", &[("name", "backend")], true),
        ("name ends with 'back'", &[("name", "backend")], false),
        ("name endswith 'end'", &[("name", "backend")], true),
        ("name contains\"ack\"", &[("name", "backend")], true),
        // precedence: && binds tighter than ||
        ("a == 'x' || b == 'y' && c == 'z'", &[("a", "x")], true),
        ("a == 'x' || b == 'y' && c == 'z'", &[("b", "y")], false),
        ("a == 'x' || b == 'y' && c == 'z'", &[("b", "y"), ("c", "z")], true),
        ("b == 'y' && c == 'z' || a == 'x'", &[("a", "x")], true),
        ("(a == 'x' || b == 'y') && c == 'z'", &[("a", "x")], false),
        ("(a == 'x' || b == 'y') && c == 'z'", &[("a", "x"), ("c", "z")], true),
        ("a == 'x' && b == 'y' && c == 'z'", &[("a", "x"), ("b", "y"), ("c", "z")], true),
        ("a == 'x' && b == 'y' && c == 'z'", &[("a", "x"), ("b", "y")], false),
        ("((has(a)))", &[("a", "x")], true),
        // negation, including of absent keys
        ("!a == 'x'", &[], true),
        ("!(a == 'x')", &[], true),
        ("!(a != 'x')", &[], false),
        ("!(a in {'x'})", &[], true),
        ("!(a not in {'x'})", &[], false),
        ("!!has(a)", &[("a", "x")], true),
        ("!(!has(a))", &[], false),
        ("!has(a) && !has(b)", &[("b", "y")], false),
        ("!(has(a) || has(b))", &[], true),
        // quotes of both kinds, values holding the other kind
        ("msg == \"it's\"", &[("msg", "it's")], true),
        ("msg == 'say \"hi\"'", &[("msg", "say \"hi\"")], true),
        ("msg in {\"it's\", 'say \"hi\"'}", &[("msg", "say \"hi\"")], true),
        ("tier == 'front end'", &[("tier", "front end")], true),
        ("city == 'Zürich'", &[("city", "Zürich")], true),
        ("op == '&& || ( ) !'", &[("op", "&& || ( ) !")], true),
        // whitespace variants
        ("app=='web'&&tier!='db'", &[("app", "web")], true),
        ("  app  ==  'web'  ", &[("app", "web")], true),
        ("\tapp\n==\r\n'web'\n", &[("app", "web")], true),
        ("(has(a)||has(b))&&!has(c)", &[("b", "y")], true),
        // prefixed and Calico implicit-label keys
        ("app.kubernetes.io/name == 'api'", &[("app.kubernetes.io/name", "api")], true),
        ("app.kubernetes.io/name == 'api'", &[("name", "api")], false),
        ("projectcalico.org/namespace == 'prod'", &[("projectcalico.org/namespace", "prod")], true),
        ("projectcalico.org/namespace == 'prod'", &[("projectcalico.org/namespace", "dev")], false),
        ("has(projectcalico.org/orchestrator)", &[("projectcalico.org/orchestrator", "k8s")], true),
        ("pcns.team == 'red'", &[("pcns.team", "red")], true),
        ("pcsa.role in {'admin', 'ops'}", &[("pcsa.role", "ops")], true),
        ("my_key-2.x == '1'", &[("my_key-2.x", "1")], true),
        // words that are only functions or operators in their place are ordinary keys
        ("all == 'x'", &[("all", "x")], true),
        ("has == 'x'", &[("has", "x")], true),
        ("in in {'x'}", &[("in", "x")], true),
        ("contains contains 'x'", &[("contains", "xx")], true),
    ];

    #[test]
    fn matches_table() {
        for &(text, pairs, expected) in MATCH_CASES {
            let selector = Selector::parse(text).unwrap_or_else(|e| panic!("{text:?} should parse, got {e}"));
            let map = labels(pairs);
            assert_eq!(selector.matches(&map), expected, "{text:?} against {pairs:?}");
            let hash_map: HashMap<String, String> = map.into_iter().collect();
            assert_eq!(selector.matches(&hash_map), expected, "{text:?} against a HashMap");
            let dynamic: &dyn Labels = &hash_map;
            assert_eq!(selector.matches(dynamic), expected, "{text:?} through &dyn Labels");
        }
    }

    #[test]
    fn display_round_trips() {
        for &(text, _, _) in MATCH_CASES {
            let selector: Selector = text.parse().unwrap();
            let shown = selector.to_string();
            let again = Selector::parse(&shown)
                .unwrap_or_else(|e| panic!("display of {text:?} = {shown:?} fails to parse: {e}"));
            assert_eq!(again, selector, "{text:?} -> {shown:?}");
            assert_eq!(again.to_string(), shown, "display is not a fixed point for {text:?}");
        }
    }

    #[test]
    fn display_is_calico_canonical_form() {
        let cases = [
            ("", "all()"),
            ("  global( ) ", "global()"),
            ("has( a )", "has(a)"),
            ("a=='x'", "a == \"x\""),
            ("a == 'say \"hi\"'", "a == 'say \"hi\"'"),
            ("a != \"it's\"", "a != \"it's\""),
            ("a == 'x' || b == 'y' && c == 'z'", "(a == \"x\" || (b == \"y\" && c == \"z\"))"),
            ("(a == 'x' || b == 'y') && c == 'z'", "((a == \"x\" || b == \"y\") && c == \"z\")"),
            ("a in {'b', 'a', 'b'}", "a in {\"a\", \"b\"}"),
            ("a notin {}", "a not in {}"),
            ("a startswith 'x'", "a starts with \"x\""),
            ("a ends   with 'x'", "a ends with \"x\""),
            ("!(!has(a))", "has(a)"),
            ("!!!has(a)", "!has(a)"),
            ("!(has(a) && b == 'c')", "!(has(a) && b == \"c\")"),
        ];
        for (text, expected) in cases {
            assert_eq!(Selector::parse(text).unwrap().to_string(), expected, "{text:?}");
        }
    }

    #[test]
    fn equality_ignores_spelling_not_structure() {
        let eq = |a: &str, b: &str| Selector::parse(a).unwrap() == Selector::parse(b).unwrap();
        assert!(eq("a in {'b', 'a'}", "a in {\"a\",\"b\",'a'}"));
        assert!(eq("((has(a)))", "!!has(a)"));
        assert!(eq("", "all()"));
        assert!(eq("a == 'x'", "a==\"x\""));
        assert!(!eq("has(a) && has(b)", "has(b) && has(a)"));
        assert!(!eq("all()", "global()"));
    }

    #[test]
    fn is_all_and_is_global() {
        for text in ["", "   ", "all()", "(all())", "!!all()", " all( ) "] {
            let s = Selector::parse(text).unwrap();
            assert!(s.is_all() && !s.is_global(), "{text:?}");
        }
        for text in ["global()", " ( global( ) ) ", "!!global()"] {
            let s = Selector::parse(text).unwrap();
            assert!(s.is_global() && !s.is_all(), "{text:?}");
        }
        for text in ["global() && has(a)", "global() || all()", "!all()", "has(a)"] {
            let s = Selector::parse(text).unwrap();
            assert!(!s.is_global() && !s.is_all(), "{text:?}");
        }
        assert!(Selector::all().is_all());
        assert!(!Selector::parse("!all()").unwrap().matches(&labels(&[])));
    }

    /// (selector, expected error position, a fragment of the expected reason).
    const ERROR_CASES: &[(&str, usize, &str)] = &[
        // unbalanced parentheses
        ("(has(a)", 7, "expected `)` to close the `(` at 0"),
        ("((has(a))", 9, "expected `)` to close the `(` at 0"),
        ("has(a))", 6, "unexpected `)` with no matching `(`"),
        (")", 0, "expected an expression, found `)`"),
        ("()", 1, "expected an expression after `(`, found `)`"),
        ("(has(a) has(b))", 8, "expected `&&`, `||` or `)` after an expression, found `has`"),
        // unterminated strings
        ("a == 'x", 5, "unterminated string: no closing `'`"),
        ("a == \"x'", 5, "unterminated string: no closing `\"`"),
        ("a in {'x', \"y}", 11, "unterminated string"),
        // missing operands
        ("has(a) &&", 9, "expected an expression after `&&`, found the end of the selector"),
        ("has(a) || ", 10, "expected an expression after `||`"),
        ("|| has(a)", 0, "expected an expression, found `||`"),
        ("has(a) && || has(b)", 10, "after `&&`, found `||`"),
        ("!", 1, "expected an expression after `!`"),
        ("a", 1, "expected an operator after label key `a`"),
        ("a ==", 4, "expected a quoted value after `==`, found the end"),
        ("a == x", 5, "expected a quoted value after `==`, found `x`"),
        ("a contains", 10, "expected a quoted value after `contains`"),
        ("a starts with x", 14, "expected a quoted value after `starts with`"),
        ("has()", 4, "expected a label key inside `has(`, found `)`"),
        ("has(a", 5, "expected `)` to close `has(`"),
        ("has(a b)", 6, "expected `)` to close `has(`, found `b`"),
        // unknown functions and operators
        ("foo(a)", 0, "unknown function `foo`"),
        ("has(a) && hasnt(b)", 10, "unknown function `hasnt`"),
        ("all(x)", 4, "`all()` takes no arguments"),
        ("global(a)", 7, "`global()` takes no arguments"),
        ("a = 'x'", 2, "single `=`"),
        ("a like 'x'", 2, "unknown operator `like`"),
        ("a not 'x'", 6, "expected `in` after `not`"),
        ("a starts 'x'", 9, "expected `with` after `starts`"),
        ("a ! 'x'", 2, "expected an operator after label key `a`"),
        ("a in 'x'", 5, "expected `{` to start a set"),
        ("a in {'x'", 9, "unterminated set: expected `}` to close the `{` at 5"),
        ("a in {'x' 'y'}", 10, "expected `,` or `}` after a value"),
        ("a in {,}", 6, "expected a quoted value or `}`"),
        ("a in {'x',,}", 10, "expected a quoted value or `}`"),
        // trailing garbage
        ("has(a) has(b)", 7, "expected `&&`, `||` or the end of the selector"),
        ("a == 'x' == 'y'", 9, "found `==`"),
        ("has(a) & has(b)", 7, "single `&`"),
        ("has(a) | has(b)", 7, "single `|`"),
        ("all() !", 6, "found `!`"),
        // keys and stray characters
        ("_a == 'x'", 0, "must start with a letter or digit"),
        ("has(/a)", 4, "must start with a letter or digit"),
        ("'x' == a", 0, "found a quoted value"),
        ("é == 'x'", 0, "found `é`"),
        ("has(a) && é", 10, "after `&&`, found `é`"),
        ("a == 'x' \u{0}", 9, "found '\\0'"),
        ("has(a)\u{c}", 6, "found '\\u{c}'"),
    ];

    #[test]
    fn errors_table() {
        for &(text, position, reason) in ERROR_CASES {
            let err = Selector::parse(text).expect_err(text);
            assert_eq!(err.position, position, "{text:?}: {err}");
            assert!(err.reason.contains(reason), "{text:?}: {err:?} lacks {reason:?}");
            assert!(text.is_char_boundary(err.position), "{text:?}: {err}");
        }
        let err = Selector::parse("a == x").unwrap_err();
        assert_eq!(err.to_string(), "at 5: expected a quoted value after `==`, found `x`");
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_crash() {
        let deep = format!("{}has(a){}", "(".repeat(100_000), ")".repeat(100_000));
        let err = Selector::parse(&deep).unwrap_err();
        assert_eq!(err.position, MAX_NESTING);
        let ok = format!("{}has(a){}", "(".repeat(MAX_NESTING), ")".repeat(MAX_NESTING));
        assert!(Selector::parse(&ok).unwrap().matches(&labels(&[("a", "")])));
        let nots = format!("{}has(a)", "!".repeat(100_001));
        assert_eq!(Selector::parse(&nots).unwrap(), Selector::parse("!has(a)").unwrap());
        let long = vec!["has(a)"; 10_000].join(" && ");
        assert!(Selector::parse(&long).unwrap().matches(&labels(&[("a", "")])));
    }

    /// Parse must return (not panic) on any input; successes round-trip through Display and
    /// failures point inside the input at a char boundary.
    #[test]
    fn no_panic_on_odd_inputs() {
        let mut inputs: Vec<String> = Vec::new();
        let seeds = MATCH_CASES.iter().map(|c| c.0).chain(ERROR_CASES.iter().map(|c| c.0));
        for seed in seeds {
            for (i, _) in seed.char_indices().skip(1) {
                inputs.push(seed[..i].to_owned()); // every prefix
                inputs.push(seed[i..].to_owned()); // every suffix
                let mut dropped = seed.to_owned();
                dropped.remove(i); // one character deleted
                inputs.push(dropped);
            }
        }
        // Random token soup from a fixed-seed LCG.
        let pieces = [
            "has(", "all()", "global()", "a", "x.y/z", "(", ")", "'", "\"", "'v'", "\"v\"", "==", "!=", "=", "!", "&&",
            "||", "&", "|", " ", "\n", "in", "not", "{", "}", ",", "contains", "starts", "with", "ends", "é", "\u{0}",
            "_",
        ];
        let mut state: u64 = 0x5eed;
        let mut next = |bound: usize| {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((state >> 33) as usize) % bound
        };
        for _ in 0..2_000 {
            let len = 1 + next(12);
            inputs.push((0..len).map(|_| pieces[next(pieces.len())]).collect());
        }
        assert!(inputs.len() > 1_000, "only {} inputs", inputs.len());

        let (mut ok, mut failed) = (0, 0);
        for input in &inputs {
            match Selector::parse(input) {
                Ok(selector) => {
                    ok += 1;
                    let shown = selector.to_string();
                    assert_eq!(Selector::parse(&shown).as_ref(), Ok(&selector), "{input:?}");
                    let _ = selector.matches(&labels(&[("a", "v"), ("x.y/z", "")]));
                }
                Err(err) => {
                    failed += 1;
                    assert!(err.position <= input.len(), "{input:?}: {err}");
                    assert!(input.is_char_boundary(err.position), "{input:?}: {err}");
                    assert!(!err.reason.is_empty(), "{input:?}");
                }
            }
        }
        assert!(ok > 50 && failed > 50, "{ok} parsed, {failed} failed");
    }
}
