//! A bounded parser for GraphQL executable documents (operations and fragments).
//!
//! Hand-written rather than a crate: the maintained parsers (`graphql-parser`, `apollo-parser`,
//! `async-graphql-parser`) pull in `combine`/`rowan`/`pest` and grow the wasm module by
//! hundreds of KiB for what the router needs: operation names, root fields, nesting and the
//! `first`/`last`/`limit` arguments. Every recursive step counts against [`NESTING_LIMIT`], so
//! no input can exhaust the stack, and no input panics (the fuzz-ish tests feed it arbitrary
//! bytes). Only argument values the router uses are kept (integers and variables).

/// Braces, brackets and list types nested deeper than this are refused.
pub const NESTING_LIMIT: u32 = 128;

#[derive(Debug, PartialEq)]
pub struct Document<'a> {
    pub operations: Vec<Operation<'a>>,
    pub fragments: Vec<Fragment<'a>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpKind {
    Query,
    Mutation,
    Subscription,
}

#[derive(Debug, PartialEq)]
pub struct Operation<'a> {
    pub kind: OpKind,
    pub name: Option<&'a str>,
    pub selections: Vec<Selection<'a>>,
}

#[derive(Debug, PartialEq)]
pub struct Fragment<'a> {
    pub name: &'a str,
    pub selections: Vec<Selection<'a>>,
}

#[derive(Debug, PartialEq)]
pub enum Selection<'a> {
    Field(Field<'a>),
    Spread(&'a str),
    Inline(Vec<Selection<'a>>),
}

#[derive(Debug, PartialEq)]
pub struct Field<'a> {
    pub name: &'a str,
    pub args: Vec<(&'a str, Value<'a>)>,
    pub selections: Vec<Selection<'a>>,
}

/// An argument value, kept only as far as the cost count reads it.
#[derive(Debug, PartialEq)]
pub enum Value<'a> {
    Int(i64),
    Variable(&'a str),
    Other,
}

/// A syntax error at a 1-based line and column (columns count characters).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyntaxError {
    pub message: String,
    pub line: u32,
    pub column: u32,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Tok<'a> {
    Punct(u8),
    Spread,
    Name(&'a str),
    Int(&'a str),
    Float,
    Str,
    Eof,
}

pub fn parse(src: &str) -> Result<Document<'_>, SyntaxError> {
    let mut p = Parser {
        src,
        pos: 0,
        tok: Tok::Eof,
        tok_start: 0,
        nesting: 0,
    };
    p.advance()?;
    p.document()
}

struct Parser<'a> {
    src: &'a str,
    pos: usize,
    tok: Tok<'a>,
    tok_start: usize,
    nesting: u32,
}

impl<'a> Parser<'a> {
    fn error_at(&self, at: usize, message: impl Into<String>) -> SyntaxError {
        let before = self.src.get(..at).unwrap_or(self.src);
        let line = before.matches('\n').count() + 1;
        let column = before.rsplit('\n').next().unwrap_or("").chars().count() + 1;
        SyntaxError {
            message: message.into(),
            line: u32::try_from(line).unwrap_or(u32::MAX),
            column: u32::try_from(column).unwrap_or(u32::MAX),
        }
    }

    fn unexpected(&self, wanted: &str) -> SyntaxError {
        let found = match self.tok {
            Tok::Punct(c) => format!("\"{}\"", c as char),
            Tok::Spread => "\"...\"".to_string(),
            Tok::Name(n) => format!("name \"{n}\""),
            Tok::Int(_) | Tok::Float => "number".to_string(),
            Tok::Str => "string".to_string(),
            Tok::Eof => "end of document".to_string(),
        };
        self.error_at(self.tok_start, format!("expected {wanted}, found {found}"))
    }

    fn enter(&mut self) -> Result<(), SyntaxError> {
        self.nesting += 1;
        if self.nesting > NESTING_LIMIT {
            return Err(self.error_at(
                self.tok_start,
                format!("document nests deeper than {NESTING_LIMIT} levels"),
            ));
        }
        Ok(())
    }

    fn leave(&mut self) {
        self.nesting = self.nesting.saturating_sub(1);
    }

    fn document(&mut self) -> Result<Document<'a>, SyntaxError> {
        let mut doc = Document {
            operations: Vec::new(),
            fragments: Vec::new(),
        };
        if self.tok == Tok::Eof {
            return Err(self.unexpected("a query, mutation, subscription or fragment"));
        }
        while self.tok != Tok::Eof {
            match self.tok {
                Tok::Punct(b'{') => doc.operations.push(Operation {
                    kind: OpKind::Query,
                    name: None,
                    selections: self.selection_set()?,
                }),
                Tok::Name("fragment") => doc.fragments.push(self.fragment()?),
                Tok::Name(kind @ ("query" | "mutation" | "subscription")) => {
                    self.advance()?;
                    doc.operations.push(self.operation(kind)?);
                }
                _ => return Err(self.unexpected("a query, mutation, subscription or fragment")),
            }
        }
        Ok(doc)
    }

    fn operation(&mut self, kind: &str) -> Result<Operation<'a>, SyntaxError> {
        let kind = match kind {
            "mutation" => OpKind::Mutation,
            "subscription" => OpKind::Subscription,
            _ => OpKind::Query,
        };
        let name = match self.tok {
            Tok::Name(n) => {
                self.advance()?;
                Some(n)
            }
            _ => None,
        };
        if self.tok == Tok::Punct(b'(') {
            self.variable_definitions()?;
        }
        self.directives()?;
        Ok(Operation {
            kind,
            name,
            selections: self.selection_set()?,
        })
    }

    fn fragment(&mut self) -> Result<Fragment<'a>, SyntaxError> {
        self.advance()?;
        let name = match self.tok {
            Tok::Name(n) if n != "on" => n,
            _ => return Err(self.unexpected("a fragment name")),
        };
        self.advance()?;
        self.keyword("on")?;
        self.name()?;
        self.directives()?;
        Ok(Fragment {
            name,
            selections: self.selection_set()?,
        })
    }

    fn variable_definitions(&mut self) -> Result<(), SyntaxError> {
        self.expect(b'(')?;
        loop {
            self.expect(b'$')?;
            self.name()?;
            self.expect(b':')?;
            self.type_ref()?;
            if self.tok == Tok::Punct(b'=') {
                self.advance()?;
                self.value()?;
            }
            self.directives()?;
            if self.tok == Tok::Punct(b')') {
                return self.advance();
            }
        }
    }

    fn type_ref(&mut self) -> Result<(), SyntaxError> {
        if self.tok == Tok::Punct(b'[') {
            self.enter()?;
            self.advance()?;
            self.type_ref()?;
            self.expect(b']')?;
            self.leave();
        } else {
            self.name()?;
        }
        if self.tok == Tok::Punct(b'!') {
            self.advance()?;
        }
        Ok(())
    }

    fn directives(&mut self) -> Result<(), SyntaxError> {
        while self.tok == Tok::Punct(b'@') {
            self.advance()?;
            self.name()?;
            if self.tok == Tok::Punct(b'(') {
                self.arguments()?;
            }
        }
        Ok(())
    }

    fn selection_set(&mut self) -> Result<Vec<Selection<'a>>, SyntaxError> {
        self.enter()?;
        self.expect(b'{')?;
        let mut selections = Vec::new();
        loop {
            selections.push(self.selection()?);
            if self.tok == Tok::Punct(b'}') {
                self.advance()?;
                self.leave();
                return Ok(selections);
            }
        }
    }

    fn selection(&mut self) -> Result<Selection<'a>, SyntaxError> {
        if self.tok != Tok::Spread {
            return self.field().map(Selection::Field);
        }
        self.advance()?;
        match self.tok {
            Tok::Name(n) if n != "on" => {
                self.advance()?;
                self.directives()?;
                Ok(Selection::Spread(n))
            }
            _ => {
                if self.tok == Tok::Name("on") {
                    self.advance()?;
                    self.name()?;
                }
                self.directives()?;
                Ok(Selection::Inline(self.selection_set()?))
            }
        }
    }

    fn field(&mut self) -> Result<Field<'a>, SyntaxError> {
        let mut name = self.name()?;
        if self.tok == Tok::Punct(b':') {
            self.advance()?;
            name = self.name()?;
        }
        let args = if self.tok == Tok::Punct(b'(') {
            self.arguments()?
        } else {
            Vec::new()
        };
        self.directives()?;
        let selections = if self.tok == Tok::Punct(b'{') {
            self.selection_set()?
        } else {
            Vec::new()
        };
        Ok(Field {
            name,
            args,
            selections,
        })
    }

    fn arguments(&mut self) -> Result<Vec<(&'a str, Value<'a>)>, SyntaxError> {
        self.expect(b'(')?;
        let mut args = Vec::new();
        loop {
            let name = self.name()?;
            self.expect(b':')?;
            args.push((name, self.value()?));
            if self.tok == Tok::Punct(b')') {
                self.advance()?;
                return Ok(args);
            }
        }
    }

    fn value(&mut self) -> Result<Value<'a>, SyntaxError> {
        let value = match self.tok {
            Tok::Punct(b'$') => {
                self.advance()?;
                return self.name().map(Value::Variable);
            }
            Tok::Int(text) => Value::Int(text.parse().unwrap_or(i64::MAX)),
            Tok::Float | Tok::Str | Tok::Name(_) => Value::Other,
            Tok::Punct(open @ (b'[' | b'{')) => {
                self.composite(open)?;
                return Ok(Value::Other);
            }
            _ => return Err(self.unexpected("a value")),
        };
        self.advance()?;
        Ok(value)
    }

    /// A list `[v ...]` or an object `{name: v ...}`; contents are not kept.
    fn composite(&mut self, open: u8) -> Result<(), SyntaxError> {
        let close = if open == b'[' { b']' } else { b'}' };
        self.enter()?;
        self.advance()?;
        while self.tok != Tok::Punct(close) {
            if open == b'{' {
                self.name()?;
                self.expect(b':')?;
            }
            self.value()?;
        }
        self.advance()?;
        self.leave();
        Ok(())
    }

    fn name(&mut self) -> Result<&'a str, SyntaxError> {
        match self.tok {
            Tok::Name(n) => {
                self.advance()?;
                Ok(n)
            }
            _ => Err(self.unexpected("a name")),
        }
    }

    fn keyword(&mut self, word: &str) -> Result<(), SyntaxError> {
        if self.tok == Tok::Name(word) {
            self.advance()
        } else {
            Err(self.unexpected(&format!("\"{word}\"")))
        }
    }

    fn expect(&mut self, c: u8) -> Result<(), SyntaxError> {
        if self.tok == Tok::Punct(c) {
            self.advance()
        } else {
            Err(self.unexpected(&format!("\"{}\"", c as char)))
        }
    }

    fn byte(&self, at: usize) -> u8 {
        self.src.as_bytes().get(at).copied().unwrap_or(0)
    }

    /// Skips ignored tokens (white space, commas, comments, BOM) and reads the next token.
    fn advance(&mut self) -> Result<(), SyntaxError> {
        loop {
            match self.byte(self.pos) {
                b' ' | b'\t' | b'\n' | b'\r' | b',' => self.pos += 1,
                b'#' => {
                    while !matches!(self.byte(self.pos), b'\n' | b'\r' | 0) {
                        self.pos += 1;
                    }
                }
                0xEF if self.src.as_bytes().get(self.pos..self.pos + 3)
                    == Some(&[0xEF, 0xBB, 0xBF]) =>
                {
                    self.pos += 3;
                }
                _ => break,
            }
        }
        self.tok_start = self.pos;
        let c = self.byte(self.pos);
        self.tok = match c {
            0 if self.pos >= self.src.len() => Tok::Eof,
            b'!' | b'$' | b'&' | b'(' | b')' | b':' | b'=' | b'@' | b'[' | b']' | b'{' | b'|'
            | b'}' => {
                self.pos += 1;
                Tok::Punct(c)
            }
            b'.' if self.src.as_bytes().get(self.pos..self.pos + 3) == Some(b"...") => {
                self.pos += 3;
                Tok::Spread
            }
            b'_' | b'a'..=b'z' | b'A'..=b'Z' => self.name_token(),
            b'-' | b'0'..=b'9' => self.number()?,
            b'"' => self.string()?,
            _ => {
                let ch = self.src.get(self.pos..).and_then(|s| s.chars().next());
                let shown = ch.map_or_else(|| format!("byte {c:#04x}"), |ch| format!("{ch:?}"));
                return Err(self.error_at(self.pos, format!("unexpected character {shown}")));
            }
        };
        Ok(())
    }

    fn name_token(&mut self) -> Tok<'a> {
        let start = self.pos;
        while matches!(self.byte(self.pos), b'_' | b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9') {
            self.pos += 1;
        }
        Tok::Name(self.src.get(start..self.pos).unwrap_or(""))
    }

    fn digits(&mut self) -> usize {
        let start = self.pos;
        while self.byte(self.pos).is_ascii_digit() {
            self.pos += 1;
        }
        self.pos - start
    }

    fn number(&mut self) -> Result<Tok<'a>, SyntaxError> {
        let start = self.pos;
        if self.byte(self.pos) == b'-' {
            self.pos += 1;
        }
        let first = self.pos;
        let n = self.digits();
        if n == 0 || (n > 1 && self.byte(first) == b'0') {
            return Err(self.error_at(start, "invalid number"));
        }
        let mut float = false;
        if self.byte(self.pos) == b'.' {
            self.pos += 1;
            float = true;
            if self.digits() == 0 {
                return Err(self.error_at(start, "invalid number"));
            }
        }
        if matches!(self.byte(self.pos), b'e' | b'E') {
            self.pos += 1;
            float = true;
            if matches!(self.byte(self.pos), b'+' | b'-') {
                self.pos += 1;
            }
            if self.digits() == 0 {
                return Err(self.error_at(start, "invalid number"));
            }
        }
        if matches!(self.byte(self.pos), b'.' | b'_' | b'a'..=b'z' | b'A'..=b'Z') {
            return Err(self.error_at(start, "invalid number"));
        }
        Ok(if float {
            Tok::Float
        } else {
            Tok::Int(self.src.get(start..self.pos).unwrap_or("0"))
        })
    }

    fn string(&mut self) -> Result<Tok<'a>, SyntaxError> {
        let start = self.pos;
        if self.src.as_bytes().get(self.pos..self.pos + 3) == Some(b"\"\"\"") {
            self.pos += 3;
            loop {
                let rest = self.src.as_bytes().get(self.pos..).unwrap_or(&[]);
                if rest.is_empty() {
                    return Err(self.error_at(start, "unterminated block string"));
                }
                if rest.starts_with(b"\\\"\"\"") {
                    self.pos += 4;
                } else if rest.starts_with(b"\"\"\"") {
                    self.pos += 3;
                    return Ok(Tok::Str);
                } else {
                    self.pos += 1;
                }
            }
        }
        self.pos += 1;
        loop {
            match self.byte(self.pos) {
                b'"' => {
                    self.pos += 1;
                    return Ok(Tok::Str);
                }
                b'\\' => {
                    let escape = self.byte(self.pos + 1);
                    if !matches!(
                        escape,
                        b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' | b'u'
                    ) {
                        return Err(self.error_at(self.pos, "invalid escape in string"));
                    }
                    self.pos += 2;
                }
                b'\n' | b'\r' => return Err(self.error_at(start, "unterminated string")),
                0 if self.pos >= self.src.len() => {
                    return Err(self.error_at(start, "unterminated string"))
                }
                _ => self.pos += 1,
            }
        }
    }
}
