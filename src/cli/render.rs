//! `mcp-authz render-envoy`: Envoy templates filled from the environment, the same rules as
//! `envoy/render.sh`.

/// Why a template could not be rendered: placeholders without a value, values refused.
#[derive(Debug, PartialEq, Eq)]
pub struct RenderError {
    /// Names without a value and without a default, each once, in order of appearance.
    pub missing: Vec<String>,
    /// `NAME: reason` for each value a placeholder refused.
    pub invalid: Vec<String>,
}

impl std::fmt::Display for RenderError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut parts = Vec::new();
        if !self.missing.is_empty() {
            parts.push(format!("not set: {}", self.missing.join(", ")));
        }
        parts.extend(self.invalid.iter().cloned());
        f.write_str(&parts.join("; "))
    }
}

/// Fills every `${NAME}` (upper-case letters, digits, `_`) of `text` from `env`, every
/// `${NAME:-default}` from `env` or, when the value is unset or empty, the default (up to the
/// next `}`), and every `${NAME:origins}` with the comma-separated web origins of `NAME` as a
/// YAML flow list of exact string matchers (`[]` when unset or empty; see [`origin_matchers`]).
/// Every unset name without a default, and every refused value, is listed in the error. The
/// same rules as `envoy/render.sh`.
pub fn render_template(
    text: &str,
    env: &std::collections::HashMap<String, String>,
) -> Result<String, RenderError> {
    let mut out = String::with_capacity(text.len());
    let mut missing: Vec<String> = Vec::new();
    let mut invalid: Vec<String> = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let name_len = after
            .bytes()
            .take_while(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || *b == b'_')
            .count();
        let name = &after[..name_len];
        let tail = &after[name_len..];
        // `}` ends a plain placeholder; `:-default}` one with a default; `:origins}` a list.
        let (form, end) = if tail.starts_with('}') {
            (Form::Plain, name_len + 1)
        } else if tail.starts_with(":origins}") {
            (Form::Origins, name_len + ":origins}".len())
        } else if let Some(d) = tail.strip_prefix(":-")
            && let Some(close) = d.find('}')
        {
            (Form::Default(&d[..close]), name_len + 2 + close + 1)
        } else {
            (Form::Plain, 0)
        };
        let valid = name_len > 0 && end > 0 && !name.as_bytes()[0].is_ascii_digit();
        if !valid {
            // Not a placeholder: keep the text as it is.
            out.push_str("${");
            rest = after;
            continue;
        }
        match (env.get(name), form) {
            (value, Form::Origins) => {
                match origin_matchers(value.map(String::as_str).unwrap_or("")) {
                    Ok(list) => out.push_str(&list),
                    Err(e) => invalid.push(format!("{name}: {e}")),
                }
            }
            (Some(v), Form::Default(d)) if v.is_empty() => out.push_str(d),
            (Some(v), _) => out.push_str(v),
            (None, Form::Default(d)) => out.push_str(d),
            (None, Form::Plain) => {
                if !missing.iter().any(|m| m == name) {
                    missing.push(name.to_owned());
                }
            }
        }
        rest = &after[end..];
    }
    out.push_str(rest);
    if missing.is_empty() && invalid.is_empty() {
        Ok(out)
    } else {
        Err(RenderError { missing, invalid })
    }
}

enum Form<'a> {
    Plain,
    Default(&'a str),
    Origins,
}

/// `https://a.example, http://localhost:6274` as `[{exact: "https://a.example"}, …]`, the
/// `allow_origin_string_match` of Envoy's CORS policy. Each origin is what a browser sends in
/// `Origin`: `http` or `https`, `://`, a lower-case host (name, IPv4 or `[IPv6]`) and an
/// optional port; nothing else. `*`, `null`, paths, wildcards and upper case are refused, so
/// the list can only ever name exact origins.
pub fn origin_matchers(list: &str) -> Result<String, String> {
    let mut out = Vec::new();
    for origin in list.split(',').map(str::trim).filter(|o| !o.is_empty()) {
        crate::config::check_origin(origin).map_err(|e| format!("{origin:?} {e}"))?;
        out.push(format!("{{exact: \"{origin}\"}}"));
    }
    Ok(format!("[{}]", out.join(", ")))
}

/// `mcp-authz render-envoy`: the template with the environment's values, to a file (written to
/// a temporary name and renamed, so Envoy never reads half a config) or stdout.
/// `render-envoy TEMPLATE... [--output FILE] [--extra SRC:DEST]...`: the templates, one after
/// the other (a fragment such as envoy/authz-mtls.yaml continues envoy.yaml's cluster list),
/// rendered to `output`, and each `extra` template rendered to its own file. Nothing is written
/// when a placeholder is unset.
pub fn render_envoy(
    templates: &[std::path::PathBuf],
    output: Option<&std::path::Path>,
    extra: &[String],
    env: impl IntoIterator<Item = (String, String)>,
) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let env: std::collections::HashMap<String, String> = env.into_iter().collect();
    let render = |paths: &[&std::path::Path]| -> anyhow::Result<String> {
        let mut text = String::new();
        for p in paths {
            text.push_str(
                &std::fs::read_to_string(p).with_context(|| format!("read {}", p.display()))?,
            );
        }
        render_template(&text, &env).map_err(|e| anyhow::anyhow!("{e}"))
    };
    let mut extras = Vec::new();
    for pair in extra {
        let (src, dest) = pair
            .split_once(':')
            .with_context(|| format!("--extra {pair}: SRC:DEST"))?;
        extras.push((
            render(&[std::path::Path::new(src)])?,
            std::path::PathBuf::from(dest),
        ));
    }
    let paths: Vec<&std::path::Path> = templates.iter().map(|p| p.as_path()).collect();
    let rendered = render(&paths)?;
    for (text, dest) in extras {
        write_whole(&dest, &text)?;
    }
    match output {
        None => {
            use std::io::Write as _;
            std::io::stdout()
                .write_all(rendered.as_bytes())
                .context("write stdout")?;
        }
        Some(path) => write_whole(path, &rendered)?,
    }
    Ok(())
}

/// Written to a temporary file and renamed, so a reader never sees half of it.
fn write_whole(path: &std::path::Path, text: &str) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).with_context(|| format!("write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("rename to {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> std::collections::HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn placeholders_are_filled_and_unset_ones_named() {
        let env = env(&[("A_1", "x"), ("PORT", "9001")]);
        assert_eq!(
            render_template("a ${A_1} b ${PORT} ${lower} $${ ${1X} end", &env),
            Ok("a x b 9001 ${lower} $${ ${1X} end".to_string())
        );
        assert_eq!(
            render_template("${MISSING} ${A_1} ${OTHER} ${MISSING}", &env),
            Err(super::RenderError {
                missing: vec!["MISSING".to_string(), "OTHER".to_string()],
                invalid: Vec::new()
            })
        );
    }

    /// A placeholder that does not apply to every setup (the unix socket path of a TCP
    /// setup) has a default, so it need not be set.
    #[test]
    fn defaults_fill_unset_or_empty_names_only() {
        let env = env(&[("SET", "x"), ("EMPTY", "")]);
        assert_eq!(
            render_template(
                "${SET:-d} ${EMPTY:-d} ${UNSET:-/run/a.sock} ${EMPTY} ${UNSET:-}",
                &env
            ),
            Ok("x d /run/a.sock  ".to_string())
        );
        // A default without its closing brace is not a placeholder.
        assert_eq!(
            render_template("${UNSET:-open", &env),
            Ok("${UNSET:-open".to_string())
        );
    }

    #[test]
    fn origins_render_as_exact_matchers() {
        assert_eq!(
            render_template(
                "o: ${O:origins} u: ${UNSET:origins}",
                &env(&[("O", " https://a.example, http://localhost:6274 ,http://[::1]:80,")])
            ),
            Ok(r#"o: [{exact: "https://a.example"}, {exact: "http://localhost:6274"}, {exact: "http://[::1]:80"}] u: []"#.to_string())
        );
    }

    /// The attack: an operator (or a copied example) writes `*`, a suffix wildcard or an origin
    /// with a path; Envoy would then answer preflights for any site, or match nothing while the
    /// operator believes it matches. Every such value is refused at render time, naming it.
    #[test]
    fn wildcards_and_non_origins_are_refused() {
        for bad in [
            "*",
            "null",
            "https://*.example.com",
            "https://a.example/",
            "https://a.example/app",
            "https://A.example",
            "ftp://a.example",
            "a.example",
            "https://a.example:0",
            "https://a.example:99999",
            "https://a.example:",
            "https://[::1]x",
            "https://good.example, *",
        ] {
            let err = render_template("${O:origins}", &env(&[("O", bad)])).unwrap_err();
            assert!(err.missing.is_empty(), "{bad}");
            assert_eq!(err.invalid.len(), 1, "{bad}: {err}");
            assert!(err.invalid[0].starts_with("O: "), "{bad}: {err}");
        }
    }
}
