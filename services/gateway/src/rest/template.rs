//! Path templates of `google.api.http` rules: parsing, and matching request paths against them.
//!
//! ```text
//! Template = "/" Segments [ Verb ] ;
//! Segments = Segment { "/" Segment } ;
//! Segment  = "*" | "**" | LITERAL | Variable ;
//! Variable = "{" FieldPath [ "=" Segments ] "}" ;
//! Verb     = ":" LITERAL ;
//! ```

use percent_encoding::percent_decode_str;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    /// `*`: exactly one segment.
    One,
    /// `**`: the rest of the path, at least one segment; only last.
    Rest,
}

/// A variable: the request field it fills and the segments `[start, end)` it covers.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Variable {
    field_path: String,
    start: usize,
    end: usize,
}

/// A parsed template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    text: String,
    segments: Vec<Segment>,
    variables: Vec<Variable>,
    verb: Option<String>,
}

/// Why a template does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("path template {template:?}: {problem}")]
pub struct TemplateError {
    template: String,
    problem: &'static str,
}

impl Template {
    /// Parses `text`.
    pub fn parse(text: &str) -> Result<Template, TemplateError> {
        let fail = |problem| TemplateError {
            template: text.to_owned(),
            problem,
        };
        let path = text
            .strip_prefix('/')
            .ok_or_else(|| fail("must start with /"))?;
        // The verb follows the last segment; a colon inside braces belongs to no verb.
        let (path, verb) = match path.rfind(':') {
            Some(colon) if !path[colon..].contains('}') && !path[colon..].contains('/') => {
                (&path[..colon], Some(path[colon + 1..].to_owned()))
            }
            _ => (path, None),
        };
        if verb.as_deref().is_some_and(str::is_empty) {
            return Err(fail("empty verb"));
        }
        let mut segments = Vec::new();
        let mut variables = Vec::new();
        let mut rest = path;
        while !rest.is_empty() {
            if let Some(inner) = rest.strip_prefix('{') {
                let close = inner.find('}').ok_or_else(|| fail("unclosed {"))?;
                let (field_path, pattern) = match inner[..close].split_once('=') {
                    Some((field, pattern)) => (field, pattern),
                    None => (&inner[..close], "*"),
                };
                if field_path.is_empty() || pattern.is_empty() {
                    return Err(fail("empty variable"));
                }
                let start = segments.len();
                for part in pattern.split('/') {
                    segments.push(segment(part).ok_or_else(|| fail("bad segment in variable"))?);
                }
                variables.push(Variable {
                    field_path: field_path.to_owned(),
                    start,
                    end: segments.len(),
                });
                rest = &inner[close + 1..];
            } else {
                let end = rest.find('/').unwrap_or(rest.len());
                segments.push(segment(&rest[..end]).ok_or_else(|| fail("bad segment"))?);
                rest = &rest[end..];
            }
            rest = match rest.strip_prefix('/') {
                Some("") => return Err(fail("trailing /")),
                Some(next) => next,
                None if rest.is_empty() => rest,
                None => return Err(fail("a variable must be a whole segment")),
            };
        }
        if segments
            .iter()
            .rev()
            .skip(1)
            .any(|segment| *segment == Segment::Rest)
        {
            return Err(fail("** must be the last segment"));
        }
        Ok(Template {
            text: text.to_owned(),
            segments,
            variables,
            verb,
        })
    }

    /// The template as written.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// The first segment, when it is a literal: the API version (`v1`).
    pub fn version(&self) -> Option<&str> {
        match self.segments.first() {
            Some(Segment::Literal(version)) => Some(version),
            _ => None,
        }
    }

    /// The first literal after the version, or the first literal of the first variable: the
    /// collection the route reads or writes (`credentials`), which scopes cache invalidation.
    pub fn collection(&self) -> &str {
        self.segments
            .iter()
            .skip(1)
            .find_map(|segment| match segment {
                Segment::Literal(text) => Some(text.as_str()),
                _ => None,
            })
            .unwrap_or("")
    }

    /// How specific the template is, for trying templates in order: a verb first, then more
    /// literal segments, then fewer wildcards.
    pub fn specificity(&self) -> (bool, usize, usize) {
        let literals = self
            .segments
            .iter()
            .filter(|s| matches!(s, Segment::Literal(_)))
            .count();
        (
            self.verb.is_some(),
            literals,
            usize::MAX - self.segments.len(),
        )
    }

    /// The field paths the template binds.
    pub fn field_paths(&self) -> impl Iterator<Item = &str> {
        self.variables.iter().map(|v| v.field_path.as_str())
    }

    /// Matches `path` (without query), returning each variable's field path and decoded value.
    pub fn matches(&self, path: &str) -> Option<Vec<(&str, String)>> {
        let path = path.strip_prefix('/')?;
        let path = match &self.verb {
            Some(verb) => path.strip_suffix(verb.as_str())?.strip_suffix(':')?,
            None => path,
        };
        let parts: Vec<&str> = path.split('/').collect();
        let mut bound = Vec::with_capacity(self.segments.len());
        let mut index = 0;
        for segment in &self.segments {
            match segment {
                Segment::Literal(text) => {
                    if parts.get(index)? != text {
                        return None;
                    }
                    bound.push((index, index + 1));
                    index += 1;
                }
                Segment::One => {
                    if parts.get(index)?.is_empty() {
                        return None;
                    }
                    bound.push((index, index + 1));
                    index += 1;
                }
                Segment::Rest => {
                    if index >= parts.len() || parts[index..].iter().any(|p| p.is_empty()) {
                        return None;
                    }
                    bound.push((index, parts.len()));
                    index = parts.len();
                }
            }
        }
        if index != parts.len() {
            return None;
        }
        let mut values = Vec::with_capacity(self.variables.len());
        for variable in &self.variables {
            let from = bound[variable.start].0;
            let to = bound[variable.end - 1].1;
            let single = to - from == 1;
            let mut value = String::new();
            for (i, part) in parts[from..to].iter().enumerate() {
                if i > 0 {
                    value.push('/');
                }
                let decoded = percent_decode_str(part).decode_utf8().ok()?;
                // A multi-segment variable keeps an encoded "/" encoded, so that the segments of
                // the value stay as the caller sent them (RFC 6570 reserved expansion).
                if !single && decoded.contains('/') {
                    value.push_str(part);
                } else {
                    value.push_str(&decoded);
                }
            }
            values.push((variable.field_path.as_str(), value));
        }
        Some(values)
    }
}

fn segment(text: &str) -> Option<Segment> {
    match text {
        "" => None,
        "*" => Some(Segment::One),
        "**" => Some(Segment::Rest),
        literal if literal.contains(['{', '}', '=', '*']) => None,
        literal => Some(Segment::Literal(literal.to_owned())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bind(template: &str, path: &str) -> Option<Vec<(String, String)>> {
        Template::parse(template)
            .unwrap()
            .matches(path)
            .map(|v| v.into_iter().map(|(f, v)| (f.to_owned(), v)).collect())
    }

    fn pairs(items: &[(&str, &str)]) -> Option<Vec<(String, String)>> {
        Some(
            items
                .iter()
                .map(|(f, v)| ((*f).to_owned(), (*v).to_owned()))
                .collect(),
        )
    }

    #[test]
    fn variables_bind_whole_resource_names() {
        assert_eq!(
            bind("/v1/{name=credentials/*}", "/v1/credentials/openai"),
            pairs(&[("name", "credentials/openai")])
        );
        assert_eq!(
            bind(
                "/v1/{name=credentials/*/versions/*}:access",
                "/v1/credentials/a/versions/3:access"
            ),
            pairs(&[("name", "credentials/a/versions/3")])
        );
        assert_eq!(
            bind(
                "/v1/{parent=credentials/*}/versions",
                "/v1/credentials/a/versions"
            ),
            pairs(&[("parent", "credentials/a")])
        );
        assert_eq!(bind("/v1/credentials", "/v1/credentials"), pairs(&[]));
        assert_eq!(bind("/v1/{id}", "/v1/x%20y"), pairs(&[("id", "x y")]));
        assert_eq!(
            bind("/v1/{path=files/**}", "/v1/files/a/b%2Fc"),
            pairs(&[("path", "files/a/b%2Fc")])
        );
    }

    #[test]
    fn mismatches_do_not_bind() {
        assert_eq!(bind("/v1/{name=credentials/*}", "/v1/credentials"), None);
        assert_eq!(
            bind("/v1/{name=credentials/*}", "/v1/credentials/a/b"),
            None
        );
        assert_eq!(bind("/v1/{name=credentials/*}", "/v1/credentials/"), None);
        assert_eq!(
            bind("/v1/{name=credentials/*}:access", "/v1/credentials/a"),
            None
        );
        assert_eq!(bind("/v1/credentials:expiring", "/v1/credentials"), None);
        assert_eq!(bind("/v1/credentials", "/v2/credentials"), None);
    }

    #[test]
    fn verbs_sort_first_and_bad_templates_are_refused() {
        let plain = Template::parse("/v1/{name=credentials/*}").unwrap();
        let verb = Template::parse("/v1/{name=credentials/*}:access").unwrap();
        assert!(verb.specificity() > plain.specificity());
        assert_eq!(verb.version(), Some("v1"));
        assert_eq!(verb.collection(), "credentials");
        for bad in [
            "v1/x",
            "/v1/{name",
            "/v1/{=x}",
            "/v1/**/x",
            "/v1/x/",
            "/v1/a{b}",
            "/v1/x:",
        ] {
            assert!(Template::parse(bad).is_err(), "{bad}");
        }
    }
}
