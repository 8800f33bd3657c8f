//! Route templates for the metrics: a request's path as the template of the route it was
//! sent to (`/api/v1/jobs/{id}`), so the `route` label never holds ids or other raw input.
//!
//! The templates are the OpenAPI spec's paths (so every route of the API is covered as soon
//! as it exists) plus the few routes served outside it. A request is labelled before
//! routing runs: one refused by the authentication or the rate limit still counts under
//! its route. A path that matches no route is `unmatched`.

use std::sync::OnceLock;

/// The label of a request that matches no route.
pub const UNMATCHED: &str = "unmatched";

/// Routes outside the OpenAPI spec; `/docs` also covers everything below it.
const EXTRA: [&str; 2] = ["/api/v1/openapi.json", "/docs"];

enum Segment {
    Literal(String),
    Param,
}

struct Template {
    text: String,
    segments: Vec<Segment>,
    /// Also matches any longer path below it.
    prefix: bool,
}

impl Template {
    fn new(text: &str, prefix: bool) -> Self {
        let segments = text
            .split('/')
            .skip(1)
            .map(|s| {
                if s.starts_with('{') && s.ends_with('}') {
                    Segment::Param
                } else {
                    Segment::Literal(s.to_string())
                }
            })
            .collect();
        Self {
            text: text.to_string(),
            segments,
            prefix,
        }
    }

    /// `Some(literal positions)` when `parts` matches; more literals is a better match.
    fn score(&self, parts: &[&str]) -> Option<Vec<bool>> {
        let long_enough = parts.len() >= self.segments.len();
        if !(parts.len() == self.segments.len() || self.prefix && long_enough) {
            return None;
        }
        let mut score = Vec::with_capacity(self.segments.len());
        for (segment, part) in self.segments.iter().zip(parts) {
            match segment {
                Segment::Literal(l) if l == part => score.push(true),
                Segment::Literal(_) => return None,
                Segment::Param if part.is_empty() => return None,
                Segment::Param => score.push(false),
            }
        }
        Some(score)
    }
}

/// Every route template of the server.
pub struct RouteTemplates {
    templates: Vec<Template>,
}

impl RouteTemplates {
    /// From the spec's path keys plus [`EXTRA`].
    fn from_spec(spec: &str) -> Self {
        let spec: serde_json::Value = serde_json::from_str(spec).unwrap_or_default();
        let mut templates: Vec<Template> = spec["paths"]
            .as_object()
            .map(|paths| paths.keys().map(|p| Template::new(p, false)).collect())
            .unwrap_or_default();
        templates.extend(EXTRA.iter().map(|p| Template::new(p, *p == "/docs")));
        Self { templates }
    }

    /// The template `path` was sent to (the most literal match), or [`UNMATCHED`].
    pub fn resolve(&'static self, path: &str) -> &'static str {
        let parts: Vec<&str> = path.split('/').skip(1).collect();
        self.templates
            .iter()
            .filter_map(|t| t.score(&parts).map(|s| (s, t)))
            .max_by(|a, b| a.0.cmp(&b.0))
            .map_or(UNMATCHED, |(_, t)| t.text.as_str())
    }
}

/// The server's templates, built from its spec once per process.
pub fn templates() -> &'static RouteTemplates {
    static TEMPLATES: OnceLock<RouteTemplates> = OnceLock::new();
    TEMPLATES.get_or_init(|| RouteTemplates::from_spec(&super::spec_json()))
}

/// A method as a label value: the standard ones by name, anything else `OTHER`.
pub fn method_label(method: &poem::http::Method) -> &'static str {
    match method.as_str() {
        "GET" => "GET",
        "POST" => "POST",
        "PUT" => "PUT",
        "PATCH" => "PATCH",
        "DELETE" => "DELETE",
        "HEAD" => "HEAD",
        "OPTIONS" => "OPTIONS",
        _ => "OTHER",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_resolve_to_their_templates() {
        let t = templates();
        assert_eq!(t.resolve("/api/v1/jobs/0190-abc"), "/api/v1/jobs/{id}");
        assert_eq!(t.resolve("/api/v1/jobs"), "/api/v1/jobs");
        assert_eq!(
            t.resolve("/api/v1/queue/jobs/j1/cancel"),
            "/api/v1/queue/jobs/{id}/cancel"
        );
        // A literal segment wins over a parameter in the same place.
        assert_eq!(t.resolve("/api/v1/queue/jobs"), "/api/v1/queue/jobs");
        assert_eq!(t.resolve("/metrics"), "/metrics");
        assert_eq!(t.resolve("/api/v1/metrics"), "/api/v1/metrics");
        assert_eq!(t.resolve("/docs/swagger-ui.css"), "/docs");
        assert_eq!(t.resolve("/health"), "/health");
        // Raw input never becomes a label.
        assert_eq!(t.resolve("/api/v1/jobs//stream"), UNMATCHED);
        assert_eq!(t.resolve("/secret-token-in-path"), UNMATCHED);
        assert_eq!(t.resolve("/api/v1/users/alice@example.com/x"), UNMATCHED);
    }
}
