//! The docs kept true against the code. README.md and every Markdown file
//! under docs/ are checked three ways:
//!
//! - every fenced block whose info string is exactly `toml` parses as a
//!   config with the runtime's own parser (`Config::parse`), so a key the
//!   config does not have, or a value it refuses, fails;
//! - every `projector` command line in a `sh`, `bash`, `shell` or
//!   `console` block (in `console` blocks, only the lines after a `$ `
//!   prompt) parses with the binary's own definition
//!   (`projector::args::Cli`); `--help` and `--version` count as valid;
//! - every HTTP route the docs name, as `GET /path` (or `GET/PUT /path`)
//!   anywhere or as the URL of a `curl` command in a shell block or an
//!   inline code span, is an operation of `runtime/api/openapi.json`.
//!
//! Each check lists all of its failures at once, by file and line. The
//! unit tests at the end feed each check a wrong block, so that none can
//! pass by finding nothing.

use clap::error::ErrorKind;
use clap::Parser;
use projector::args::Cli;
use projector::config::Config;
use projector_tests::root;
use serde_json::Value;
use std::path::{Path, PathBuf};

/// A Markdown file: its path from the repository root, and its text.
struct Doc {
    name: String,
    text: String,
}

/// A fenced code block: its info string, the lines of its opening and
/// closing fences, and the lines between, each with its line number.
struct Block {
    info: String,
    line: usize,
    end: usize,
    lines: Vec<(usize, String)>,
}

impl Block {
    fn text(&self) -> String {
        let lines: Vec<&str> = self.lines.iter().map(|(_, l)| l.as_str()).collect();
        lines.join("\n")
    }

    fn is_shell(&self) -> bool {
        matches!(self.info.as_str(), "sh" | "bash" | "shell" | "console")
    }
}

/// README.md and docs/**/*.md.
fn docs() -> Vec<Doc> {
    let root = root();
    let mut files = vec![root.join("README.md")];
    files.extend(markdown_files(&root.join("docs")));
    files
        .iter()
        .map(|path| Doc {
            name: path
                .strip_prefix(&root)
                .unwrap_or(path)
                .display()
                .to_string(),
            text: std::fs::read_to_string(path)
                .unwrap_or_else(|e| panic!("reading {}: {e}", path.display())),
        })
        .collect()
}

/// The `.md` files under `dir`, recursively, sorted.
fn markdown_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    for entry in entries {
        let path = entry.expect("directory entry").path();
        if path.is_dir() {
            files.extend(markdown_files(&path));
        } else if path.extension().is_some_and(|e| e == "md") {
            files.push(path);
        }
    }
    files.sort();
    files
}

/// The fence that opens or closes a code block on `line`, if one: its
/// character, its length and the rest of the line (the info string).
fn fence(line: &str) -> Option<(char, usize, &str)> {
    let line = line.trim_start();
    let c = line.chars().next().filter(|c| matches!(c, '`' | '~'))?;
    let len = line.chars().take_while(|&x| x == c).count();
    (len >= 3).then(|| (c, len, line[len..].trim()))
}

/// The fenced code blocks of a Markdown text.
fn blocks(text: &str) -> Vec<Block> {
    let mut found = Vec::new();
    let mut open: Option<(char, usize, Block)> = None;
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        open = match (open, fence(line)) {
            (None, Some((c, len, info))) => Some((
                c,
                len,
                Block {
                    info: info.to_string(),
                    line: n,
                    end: n,
                    lines: Vec::new(),
                },
            )),
            (None, None) => None,
            (Some((c, len, block)), Some((d, l, ""))) if d == c && l >= len => {
                found.push(Block { end: n, ..block });
                None
            }
            (Some((c, len, mut block)), _) => {
                block.lines.push((n, line.to_string()));
                Some((c, len, block))
            }
        };
    }
    found
}

/// The lines outside fenced code blocks, with their line numbers.
fn prose(text: &str) -> Vec<(usize, &str)> {
    let fenced: Vec<_> = blocks(text).iter().map(|b| b.line..=b.end).collect();
    text.lines()
        .enumerate()
        .map(|(i, l)| (i + 1, l))
        .filter(|(n, _)| !fenced.iter().any(|lines| lines.contains(n)))
        .collect()
}

/// Failures: the `toml` blocks that are not valid configs.
fn toml_failures(doc: &Doc) -> Vec<String> {
    blocks(&doc.text)
        .iter()
        .filter(|b| b.info == "toml")
        .filter_map(|b| {
            let at = format!("{}:{}", doc.name, b.line);
            let parsed = Config::parse(&b.text(), &at, &root());
            parsed.err().map(|e| format!("{at}: {}", e.message))
        })
        .collect()
}

/// The command lines of a shell block, each with the line it starts on:
/// a line ending in `\` is joined with the next, and a `$ ` prompt is
/// dropped (in a `console` block, a line without one is output).
fn command_lines(block: &Block) -> Vec<(usize, String)> {
    let mut joined: Vec<(usize, String)> = Vec::new();
    let mut continued = false;
    for (n, line) in &block.lines {
        let line = line.trim();
        let (text, continues) = match line.strip_suffix('\\') {
            Some(text) => (text, true),
            None => (line, false),
        };
        match joined.last_mut() {
            Some((_, last)) if continued => {
                last.push(' ');
                last.push_str(text);
            }
            _ => joined.push((*n, text.to_string())),
        }
        continued = continues;
    }
    let console = block.info == "console";
    joined
        .into_iter()
        .filter_map(|(n, line)| match line.strip_prefix("$ ") {
            Some(command) => Some((n, command.to_string())),
            None => (!console).then_some((n, line)),
        })
        .collect()
}

/// The commands of a shell line, each as its words, split as a shell
/// does: quotes and backslashes are removed; `|`, `&` and `;` end a
/// command; a redirection (`>`, `2>&1`, `<`) and its target are dropped;
/// `#` at the start of a word ends the line.
fn shell_commands(line: &str) -> Vec<Vec<String>> {
    let mut split = ShellSplit::default();
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\'' => split
                .word()
                .extend(chars.by_ref().take_while(|&c| c != '\'')),
            '"' => {
                let word = split.word();
                while let Some(c) = chars.next() {
                    match c {
                        '"' => break,
                        '\\' if matches!(chars.peek(), Some('"' | '\\' | '$' | '`')) => {
                            word.extend(chars.next())
                        }
                        c => word.push(c),
                    }
                }
            }
            '\\' => split.word().extend(chars.next()),
            '#' if split.word.is_none() => break,
            '|' | '&' | ';' => split.end_command(),
            '<' if opens_placeholder(&chars) => {
                let word = split.word();
                word.push('<');
                word.extend(chars.by_ref().take_while(|&c| c != '>'));
                word.push('>');
            }
            '<' | '>' => {
                split.redirect();
                while chars.next_if(|&c| matches!(c, '<' | '>' | '&')).is_some() {}
            }
            c if c.is_whitespace() => split.end_word(),
            c => split.word().push(c),
        }
    }
    split.end_command();
    split.commands
}

/// Whether the text after a `<` makes it a placeholder such as
/// `<plugin>`, not a redirection.
fn opens_placeholder(after: &std::iter::Peekable<std::str::Chars>) -> bool {
    let rest: String = after.clone().collect();
    let name = rest
        .find(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-')))
        .unwrap_or(rest.len());
    name > 0 && rest[name..].starts_with('>')
}

/// The state of [`shell_commands`].
#[derive(Default)]
struct ShellSplit {
    commands: Vec<Vec<String>>,
    command: Vec<String>,
    word: Option<String>,
    /// The next word is a redirection's target.
    target: bool,
}

impl ShellSplit {
    fn word(&mut self) -> &mut String {
        self.word.get_or_insert_with(String::new)
    }

    fn end_word(&mut self) {
        if let Some(word) = self.word.take() {
            if !std::mem::take(&mut self.target) {
                self.command.push(word);
            }
        }
    }

    /// A redirection: a file descriptor just before it (`2>`) is not a word.
    fn redirect(&mut self) {
        if self
            .word
            .as_ref()
            .is_some_and(|w| w.chars().all(|c| c.is_ascii_digit()))
        {
            self.word = None;
        }
        self.end_word();
        self.target = true;
    }

    fn end_command(&mut self) {
        self.end_word();
        self.target = false;
        if !self.command.is_empty() {
            self.commands.push(std::mem::take(&mut self.command));
        }
    }
}

/// Whether `word` sets an environment variable (`NAME=value`).
fn is_assignment(word: &str) -> bool {
    word.split_once('=').is_some_and(|(name, _)| {
        name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
    })
}

/// A command's words without the environment assignments before it.
fn program_and_args(words: &[String]) -> Vec<&str> {
    words
        .iter()
        .map(String::as_str)
        .skip_while(|w| is_assignment(w))
        .collect()
}

/// The arguments given to `projector`, if `words` run it: `projector`,
/// a path ending in `/projector`, or `cargo run -p projector -- ...`.
fn projector_args(words: &[String]) -> Option<Vec<&str>> {
    match program_and_args(words).as_slice() {
        [program, args @ ..] if *program == "projector" || program.ends_with("/projector") => {
            Some(args.to_vec())
        }
        ["cargo", "run", rest @ ..] if rest.contains(&"projector") => {
            let args = rest.iter().skip_while(|w| **w != "--").skip(1);
            Some(args.copied().collect())
        }
        _ => None,
    }
}

/// Whether the CLI accepts `args`; clap's first line of complaint if not.
fn parse_cli(args: &[&str]) -> Result<(), String> {
    match Cli::try_parse_from(std::iter::once("projector").chain(args.iter().copied())) {
        Ok(_) => Ok(()),
        Err(e) if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) => Ok(()),
        Err(e) => Err(e.to_string().lines().next().unwrap_or_default().to_string()),
    }
}

/// Failures: the `projector` command lines of shell blocks the CLI refuses.
fn cli_failures(doc: &Doc) -> Vec<String> {
    let mut failures = Vec::new();
    for block in blocks(&doc.text).iter().filter(|b| b.is_shell()) {
        for (n, line) in command_lines(block) {
            for words in shell_commands(&line) {
                if let Some(Err(e)) = projector_args(&words).map(|args| parse_cli(&args)) {
                    failures.push(format!("{}:{n}: `{line}`: {e}", doc.name));
                }
            }
        }
    }
    failures
}

const METHODS: [&str; 5] = ["GET", "POST", "PUT", "DELETE", "PATCH"];

/// The operations of an OpenAPI document: each path's segments and its
/// methods (lowercase, as OpenAPI spells them).
struct Routes(Vec<(Vec<String>, Vec<String>)>);

impl Routes {
    /// The routes of `runtime/api/openapi.json`.
    fn load() -> Routes {
        let path = root().join("runtime/api/openapi.json");
        let text = std::fs::read_to_string(&path).expect("runtime/api/openapi.json");
        Routes::of(&serde_json::from_str(&text).expect("openapi.json is JSON"))
    }

    fn of(openapi: &Value) -> Routes {
        let paths = openapi["paths"]
            .as_object()
            .expect("openapi.json has paths");
        Routes(
            paths
                .iter()
                .map(|(path, item)| {
                    let methods = item.as_object().map(|o| o.keys().cloned().collect());
                    (segments(path), methods.unwrap_or_default())
                })
                .collect(),
        )
    }

    /// Whether `method` on `path` is an operation; what is wrong if not.
    fn check(&self, method: &str, path: &str) -> Result<(), String> {
        let wanted = segments(path);
        let matching: Vec<&Vec<String>> = self
            .0
            .iter()
            .filter(|(template, _)| {
                template.len() == wanted.len()
                    && template
                        .iter()
                        .zip(&wanted)
                        .all(|(t, w)| segment_matches(w, t))
            })
            .map(|(_, methods)| methods)
            .collect();
        if matching.is_empty() {
            return Err("no such path in runtime/api/openapi.json".into());
        }
        let method = match method.to_ascii_lowercase().as_str() {
            "head" => "get".to_string(),
            m => m.to_string(),
        };
        match matching.iter().any(|methods| methods.contains(&method)) {
            true => Ok(()),
            false => Err(format!(
                "no {method} operation on it in runtime/api/openapi.json"
            )),
        }
    }
}

fn segments(path: &str) -> Vec<String> {
    path.split('/').map(str::to_string).collect()
}

/// Whether a path's segment in the docs fits a template's segment: equal,
/// or any value for a `{param}`; a placeholder (`{plugin}`, `<plugin>`,
/// `PLUGIN`, `$PLUGIN`) fits a `{param}` only.
fn segment_matches(doc: &str, template: &str) -> bool {
    let param = template.starts_with('{');
    match is_placeholder(doc) {
        true => param,
        false => param || doc == template,
    }
}

fn is_placeholder(segment: &str) -> bool {
    segment.starts_with(['{', '<', '$', ':'])
        || (segment.chars().any(|c| c.is_ascii_uppercase())
            && segment
                .chars()
                .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_' || c == '-'))
}

/// The path at the start of `text`, up to where the path ends (a space,
/// backtick, query, bracket, quote, comma...), without closing punctuation.
fn path_at(text: &str) -> &str {
    let end = text
        .find(|c: char| c.is_whitespace() || "`?#[]()\"',;|*\\".contains(c))
        .unwrap_or(text.len());
    text[..end].trim_end_matches(['.', ':'])
}

/// The routes a line names as `GET /path` or `GET/PUT /path`: the
/// methods and the path.
fn named_routes(line: &str) -> Vec<(Vec<&str>, &str)> {
    let mut found = Vec::new();
    for (i, _) in line.match_indices(" /") {
        let before = &line[..i];
        let word_len = before
            .chars()
            .rev()
            .take_while(|c| c.is_ascii_uppercase() || *c == '/')
            .count();
        let methods: Vec<&str> = before[i - word_len..].split('/').collect();
        if methods.iter().all(|m| METHODS.contains(m)) {
            found.push((methods, path_at(&line[i + 1..])));
        }
    }
    found
}

/// Options of curl that take a value (short ones as letters).
const CURL_SHORT_WITH_VALUE: &str = "AbcCdDeEFHKmoOQrTuUwxXyYz";
const CURL_LONG_WITH_VALUE: &str = "cacert cert config connect-timeout connect-to cookie \
    cookie-jar data data-ascii data-binary data-raw data-urlencode dump-header form form-string \
    header json key max-time output proxy referer request resolve retry unix-socket upload-file \
    url user write-out";

/// A curl command's options, as (name, value) with short names as
/// letters, and its other arguments as ("", argument).
fn curl_options<'a>(args: &[&'a str]) -> Vec<(String, &'a str)> {
    let mut options = Vec::new();
    let mut args = args.iter().copied();
    while let Some(arg) = args.next() {
        if let Some(long) = arg.strip_prefix("--") {
            let (name, inline) = long
                .split_once('=')
                .map_or((long, None), |(n, v)| (n, Some(v)));
            let value = match CURL_LONG_WITH_VALUE.split_whitespace().any(|n| n == name) {
                true => inline.or_else(|| args.next()).unwrap_or_default(),
                false => "",
            };
            options.push((name.to_string(), value));
        } else if let Some(short) = arg.strip_prefix('-').filter(|s| !s.is_empty()) {
            for (i, c) in short.char_indices() {
                if CURL_SHORT_WITH_VALUE.contains(c) {
                    let rest = &short[i + 1..];
                    let value = if rest.is_empty() {
                        args.next()
                    } else {
                        Some(rest)
                    };
                    options.push((c.to_string(), value.unwrap_or_default()));
                    break;
                }
                options.push((c.to_string(), ""));
            }
        } else {
            options.push((String::new(), arg));
        }
    }
    options
}

/// The method and URL path of a `curl` command, if `words` run curl with
/// a URL: `-X` names the method, else a body makes it POST (`-T`: PUT,
/// `-I`: HEAD), else GET.
fn curl_request(words: &[String]) -> Option<(String, String)> {
    let words = program_and_args(words);
    let ["curl", args @ ..] = words.as_slice() else {
        return None;
    };
    let (mut method, mut url) = (None, None);
    let mut implied = "GET";
    for (name, value) in curl_options(args) {
        match name.as_str() {
            "X" | "request" => method = Some(value.to_string()),
            "" | "url" => url = url.or(Some(value)),
            "d" | "F" | "json" | "form" | "form-string" => implied = "POST",
            n if n.starts_with("data") => implied = "POST",
            "T" | "upload-file" => implied = "PUT",
            "I" | "head" => implied = "HEAD",
            _ => {}
        }
    }
    let path = url_path(url?)?;
    Some((method.unwrap_or_else(|| implied.to_string()), path))
}

/// The path of a URL (`http://host:port/path?query`, `host/path`,
/// `$BASE/path`), without its query; none when a variable hides it.
fn url_path(url: &str) -> Option<String> {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    match rest.find('/') {
        Some(i) => Some(path_at(&rest[i..]).to_string()),
        None if rest.starts_with('$') => None,
        None => Some("/".into()),
    }
}

/// The commands a doc shows, each with its line: those of its shell
/// blocks, and inline code spans of its prose.
fn commands(doc: &Doc) -> Vec<(usize, String)> {
    let mut found: Vec<(usize, String)> = blocks(&doc.text)
        .iter()
        .filter(|b| b.is_shell())
        .flat_map(command_lines)
        .collect();
    for (n, line) in prose(&doc.text) {
        let spans = line.split('`').skip(1).step_by(2);
        found.extend(spans.map(|span| (n, span.to_string())));
    }
    found
}

/// Failures: the routes a doc names that openapi.json does not have.
fn route_failures(doc: &Doc, routes: &Routes) -> Vec<String> {
    let mut failures = Vec::new();
    for (i, line) in doc.text.lines().enumerate() {
        for (methods, path) in named_routes(line) {
            for method in methods {
                if let Err(e) = routes.check(method, path) {
                    failures.push(format!("{}:{}: {method} {path}: {e}", doc.name, i + 1));
                }
            }
        }
    }
    for (n, line) in commands(doc) {
        for (method, path) in shell_commands(&line).iter().filter_map(|w| curl_request(w)) {
            if let Err(e) = routes.check(&method, &path) {
                failures.push(format!("{}:{n}: `{line}`: {method} {path}: {e}", doc.name));
            }
        }
    }
    failures
}

/// Assert that a check found nothing wrong, listing all it found if not.
fn assert_none(what: &str, failures: Vec<String>) {
    assert!(
        failures.is_empty(),
        "{} {what}:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn toml_blocks_of_the_docs_are_valid_configs() {
    let failures = docs().iter().flat_map(toml_failures).collect();
    assert_none("toml blocks that are not valid configs", failures);
}

#[test]
fn command_lines_of_the_docs_parse_with_the_cli() {
    let failures = docs().iter().flat_map(cli_failures).collect();
    assert_none("projector command lines the CLI refuses", failures);
}

#[test]
fn routes_of_the_docs_are_in_openapi_json() {
    let routes = Routes::load();
    let failures = docs()
        .iter()
        .flat_map(|d| route_failures(d, &routes))
        .collect();
    assert_none("routes not in runtime/api/openapi.json", failures);
}

/// The checks themselves, on small docs with known mistakes.
mod checks {
    use super::*;

    fn doc(text: &str) -> Doc {
        Doc {
            name: "bad.md".into(),
            text: text.into(),
        }
    }

    #[test]
    fn a_misspelled_config_key_is_reported_with_its_block() {
        let text = "# Config\n\n```toml\n[engine]\nbatch_sise = 10\n```\n\n\
                    ```toml\n[http]\nlisten = \"127.0.0.1:8080\"\n```\n\n\
                    ```toml\ndata_dirr = \"data\"\n```\n\n```text\nnot = [toml\n```\n";
        let failures = toml_failures(&doc(text));
        assert_eq!(failures.len(), 2, "{failures:#?}");
        assert!(failures[0].starts_with("bad.md:3: ") && failures[0].contains("batch_sise"));
        assert!(failures[1].starts_with("bad.md:13: ") && failures[1].contains("data_dirr"));
    }

    #[test]
    fn an_unknown_flag_or_command_is_reported_with_its_line() {
        let text = "```sh\n\
                    projector --config a.toml run --exit-when-idle --listen off &\n\
                    projector run --no-such-flag\n\
                    cat events.ndjson | ./target/release/projector frobnicate - > out.txt\n\
                    cargo run -p projector -- --help\n\
                    FOO=1 target/release/projector get p 'a key' --at-ms 5 2>&1 # a comment\n\
                    projector plugin deploy p.wasm \\\n  --mode shadow --bogus\n\
                    ```\n\n```console\n$ projector --version\nprojector 0.1.0\n\
                    $ projector backfill p --rat 5\n```\n\n```text\nprojector nonsense\n```\n";
        let failures = cli_failures(&doc(text));
        let lines: Vec<&str> = failures
            .iter()
            .map(|f| &f[..f.find(": ").unwrap_or(0)])
            .collect();
        assert_eq!(
            lines,
            ["bad.md:3", "bad.md:4", "bad.md:7", "bad.md:14"],
            "{failures:#?}"
        );
        assert!(failures[0].contains("--no-such-flag"), "{failures:#?}");
        assert!(failures[1].contains("frobnicate"), "{failures:#?}");
        assert!(failures[2].contains("--bogus"), "{failures:#?}");
    }

    #[test]
    fn an_unknown_route_is_reported_with_its_line() {
        let routes = Routes::of(&serde_json::json!({"paths": {
            "/healthz": {"get": {}},
            "/v1/plugins": {"get": {}},
            "/v1/views/{plugin}/{key}": {"get": {}},
            "/v1/admin/rollout/{plugin}": {"get": {}, "put": {}, "delete": {}},
            "/v1/admin/plugins/{plugin}/logs": {"get": {}},
        }}));
        let text = "`GET /v1/plugins`, `GET /healthz`, GET/PUT /v1/admin/rollout/PLUGIN.\n\
                    | `GET /v1/nope` | `PATCH /v1/plugins` |\n\
                    Logs: `curl $API/v1/admin/plugins/<plugin>/logs`, `GET /v1/admin/plugins/{name}/logz`\n\
                    ```sh\n\
                    curl -s 'http://127.0.0.1:8080/v1/views/inbox-unread/u1:s1?token=log@1:41' | jq .\n\
                    curl -sS -XPOST --data-binary @x.ndjson localhost:8080/v1/plugins/extra\n\
                    curl -H 'authorization: Bearer t' -d @rollout.json \\\n  http://127.0.0.1:8080/v1/plugins\n\
                    ```\n";
        let failures = route_failures(&doc(text), &routes);
        let expected = [
            "bad.md:2: GET /v1/nope: no such path",
            "bad.md:2: PATCH /v1/plugins: no patch operation",
            "bad.md:3: GET /v1/admin/plugins/{name}/logz: no such path",
            "bad.md:6: `curl -sS -XPOST",
            "bad.md:7: `curl -H",
        ];
        assert_eq!(failures.len(), expected.len(), "{failures:#?}");
        for (failure, start) in failures.iter().zip(expected) {
            assert!(
                failure.starts_with(start),
                "{failure} should start with {start}"
            );
        }
        assert!(failures[4].contains("POST /v1/plugins"), "{failures:#?}");
    }

    #[test]
    fn shell_lines_split_into_commands_and_words() {
        let commands = shell_commands(
            r#"A=1 curl -s "$URL/x y" 'it''s' a\ b 2>/dev/null | jq '.a' && echo "q\"" ; ls # c | d"#,
        );
        let expected: Vec<Vec<&str>> = vec![
            vec!["A=1", "curl", "-s", "$URL/x y", "its", "a b"],
            vec!["jq", ".a"],
            vec!["echo", "q\""],
            vec!["ls"],
        ];
        assert_eq!(commands, expected);
    }
}
