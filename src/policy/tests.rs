//! Golden tests for policy diagnostics: each malformed policy must produce
//! exactly these `FILE:LINE:COL: severity: message` lines.

use crate::policy::{Policy, PolicyError};

const HEAD: &str = "[meta]\ntrust_domain = \"example.org\"\n";

/// The header line of every diagnostic for `body` (appended to a valid [meta]).
fn diagnostics(source: &str) -> Vec<String> {
    match Policy::parse(source, "p.toml") {
        Ok(p) => {
            p.warnings().iter().map(|d| d.to_string().lines().next().unwrap_or("").to_string()).collect()
        }
        Err(PolicyError::Invalid { diagnostics }) => {
            diagnostics.iter().map(|d| d.to_string().lines().next().unwrap_or("").to_string()).collect()
        }
        Err(e) => vec![e.to_string()],
    }
}

fn with_head(body: &str) -> Vec<String> {
    diagnostics(&format!("{HEAD}{body}"))
}

#[test]
fn syntax_error_has_position() {
    let d = diagnostics("[meta\n");
    assert_eq!(d.len(), 1, "{d:?}");
    assert!(d[0].starts_with("p.toml:1:"), "{d:?}");
}

#[test]
fn duplicate_service_table() {
    let d =
        with_head("[services.web]\nid = \"spiffe://example.org/svc/web\"\n[services.web]\nsend = [\"a\"]\n");
    assert_eq!(d.len(), 1, "{d:?}");
    assert!(d[0].starts_with("p.toml:5:"), "{d:?}");
    assert!(d[0].contains("duplicate"), "{d:?}");
}

#[test]
fn missing_meta_and_trust_domain() {
    assert_eq!(diagnostics("[services]\n"), ["p.toml:1:1: error: missing [meta] table"]);
    assert_eq!(diagnostics("[meta]\nserial = 3\n"), ["p.toml:1:2: error: missing trust_domain in [meta]"]);
    assert_eq!(
        diagnostics("[meta]\ntrust_domain = \"Example.org\"\n"),
        ["p.toml:2:16: error: invalid trust domain \"Example.org\""]
    );
    assert_eq!(
        diagnostics("[meta]\ntrust_domain = \"example.org\"\nserial = -1\n"),
        ["p.toml:3:10: error: serial must not be negative"]
    );
}

#[test]
fn unknown_keys_everywhere_with_suggestions() {
    let d = with_head(
        "srvices = 1\n[services.web]\nid = \"spiffe://example.org/svc/web\"\nsned = [\"a.b\"]\nlimits = { rate = 1, brust = 2 }\n[[deny]]\nservices = [\"*\"]\nsend = [\"x\"]\nreasn = \"r\"\n",
    );
    assert_eq!(
        d,
        [
            "p.toml:3:1: error: unknown key \"srvices\" in [meta]",
            "p.toml:4:11: warning: service \"web\" has no rules: it may connect but can neither send nor receive",
            "p.toml:6:1: error: unknown key \"sned\" in [services.web]",
            "p.toml:7:22: error: unknown key \"brust\" in services.web.limits",
            "p.toml:11:1: error: unknown key \"reasn\" in [[deny]]",
        ]
    );
    let full =
        Policy::parse("srvices = 1\n[meta]\ntrust_domain = \"x.org\"\n", "p.toml").unwrap_err().to_string();
    assert!(full.contains("hint: did you mean \"services\"?"), "{full}");
}

#[test]
fn identities() {
    let d = with_head(
        "[services.a]\nid = \"spiffe://other.org/svc/a\"\nsend = [\"x\"]\n[services.b]\nid = \"spiffe://example.org/svc/c\"\nsend = [\"x\"]\n[services.c]\nid = \"https://example.org/svc/c\"\nsend = [\"x\"]\n[services.d]\nsend = [\"x\"]\n",
    );
    assert_eq!(
        d,
        [
            "p.toml:4:6: error: identity \"spiffe://other.org/svc/a\" is outside the trust domain \"example.org\"",
            "p.toml:7:6: error: identity \"spiffe://example.org/svc/c\" does not name service \"b\"",
            "p.toml:10:6: error: identity \"https://example.org/svc/c\" is not a SPIFFE id",
            "p.toml:12:11: error: service \"d\" has no id",
        ]
    );
}

#[test]
fn duplicate_identity_points_at_the_second() {
    let d = with_head(
        "[services.a]\nid = \"spiffe://example.org/svc/a\"\nsend = [\"x\"]\n[services.b]\nid = \"spiffe://example.org/svc/a\"\nsend = [\"x\"]\n",
    );
    assert_eq!(
        d,
        [
            "p.toml:7:6: error: identity \"spiffe://example.org/svc/a\" does not name service \"b\"",
            "p.toml:7:6: error: duplicate identity \"spiffe://example.org/svc/a\": already used by service \"a\" at 4:6",
        ]
    );
}

#[test]
fn bad_patterns() {
    let d = with_head(
        "[services.web]\nid = \"spiffe://example.org/svc/web\"\nsend = [\"Todos.list\", \"a.>.b\", \"a..b\", \"a.b@x\", \"a.b@4,2\", \"a b\", 7]\nreceive = \"a.b\"\n",
    );
    assert_eq!(
        d,
        [
            "p.toml:5:9: error: bad pattern in services.web.send: uppercase letters in \"Todos.list\": names are lowercase",
            "p.toml:5:23: error: bad pattern in services.web.send: \">\" may only be the last token in \"a.>.b\"",
            "p.toml:5:32: error: bad pattern in services.web.send: empty token in \"a..b\"",
            "p.toml:5:40: error: bad pattern in services.web.send: invalid version \"x\"",
            "p.toml:5:49: error: bad pattern in services.web.send: version range @4,2 is empty: no version can match",
            "p.toml:5:60: error: bad pattern in services.web.send: invalid token \"a b\" in \"a b\"",
            "p.toml:5:67: error: services.web.send must contain only strings, not a integer",
            "p.toml:6:11: error: services.web.receive must be an array of strings",
        ]
    );
}

#[test]
fn shadowed_rule_no_name_can_match() {
    let d = with_head(
        "[services.web]\nid = \"spiffe://example.org/svc/web\"\nsend = [\"admin.reset\", \"todos.*\"]\n[[deny]]\nservices = [\"web\"]\nsend = [\"admin.>\"]\n",
    );
    assert_eq!(
        d,
        [
            "p.toml:5:9: error: no name can match this rule: \"admin.reset\" in services.web.send is always denied by the deny at 8:9 (\"admin.>\")"
        ]
    );
}

#[test]
fn deny_tables() {
    let d = with_head(
        "[services.web]\nid = \"spiffe://example.org/svc/web\"\nsend = [\"x\"]\n[[deny]]\nservices = [\"wbe\"]\nexcept = [\"nobody\"]\nsend = [\"y\"]\n[[deny]]\nreason = \"empty\"\n",
    );
    assert_eq!(
        d,
        [
            "p.toml:7:13: error: unknown service \"wbe\" in deny.services",
            "p.toml:8:11: error: unknown service \"nobody\" in deny.except",
            "p.toml:10:1: error: [[deny]] without services",
            "p.toml:10:1: error: [[deny]] denies nothing",
        ]
    );
}

#[test]
fn limits_and_messages() {
    let d = with_head(
        "[services.web]\nid = \"spiffe://example.org/svc/web\"\nsend = [\"x\"]\nlimits = { max_size = \"1 parsec\", burst = 5 }\n[messages.\"a.b@2\"]\nmax_size = 10\n[messages.\"c.>\"]\nmax_size = 0\n",
    );
    assert_eq!(
        d,
        [
            "p.toml:6:23: error: invalid size \"1 parsec\": write a number of bytes, or a number with KiB, MiB or GiB (e.g. \"256KiB\")",
            "p.toml:6:43: error: burst without rate",
            "p.toml:7:11: error: [messages] keys take no version: \"a.b@2\"",
            "p.toml:10:12: error: max_size must be positive",
        ]
    );
}

#[test]
fn service_without_rules_is_only_a_warning() {
    let p =
        Policy::parse(&format!("{HEAD}[services.idle]\nid = \"spiffe://example.org/svc/idle\"\n"), "p.toml")
            .unwrap();
    let w: Vec<String> = p.warnings().iter().map(|d| d.to_string()).collect();
    assert_eq!(w.len(), 1);
    assert!(w[0].starts_with("p.toml:3:11: warning: service \"idle\" has no rules"), "{w:?}");
}

#[test]
fn the_example_policies_are_valid_and_their_tests_pass() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("policy");
    for name in ["todo.toml", "payments.toml"] {
        let p = Policy::from_file(&dir.join(name)).unwrap();
        assert!(p.warnings().is_empty(), "{name}: {:?}", p.warnings());
    }
    let reports = crate::policy::suite::run_path(&dir).unwrap();
    assert!(reports.len() >= 2);
    for r in reports {
        assert!(r.passed(), "{}: {:?}", r.suite.display(), r.failures);
    }
}

#[test]
fn sha_and_meta() {
    let src = format!("{HEAD}serial = 7\n");
    let p = Policy::parse(&src, "p.toml").unwrap();
    assert_eq!(p.serial(), 7);
    assert_eq!(p.trust_domain(), "example.org");
    assert_eq!(p.sha256_hex(), crate::policy::parse::sha256_hex(src.as_bytes()));
    assert_eq!(p.sha256_hex().len(), 64);
}

#[test]
fn from_file_signed_refuses_unsigned() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.toml");
    std::fs::write(&path, HEAD).unwrap();
    let key =
        crate::policy::sign::SigningKey::from_pem(crate::policy::sign::tests::test_key_pem().as_bytes())
            .unwrap();
    assert!(matches!(Policy::from_file_signed(&path, &[key.public_key()]), Err(PolicyError::Signature(_))));
    crate::policy::sign::sign_file(&path, &key).unwrap();
    assert!(Policy::from_file_signed(&path, &[key.public_key()]).is_ok());
}

#[test]
fn a_long_line_is_shown_in_a_window_with_the_caret_on_the_span() {
    // One long line of send patterns with a bad one far to the right.
    let mut patterns: Vec<String> = (0..60).map(|i| format!("\"ok.n{i}\"")).collect();
    patterns.push("\"Bad Name\"".into());
    let body =
        format!("[services.web]\nid = \"spiffe://example.org/svc/web\"\nsend = [{}]\n", patterns.join(", "));
    let Err(PolicyError::Invalid { diagnostics }) = Policy::parse(&format!("{HEAD}{body}"), "p.toml") else {
        panic!("the bad pattern was accepted");
    };
    let d = diagnostics
        .iter()
        .find(|d| d.message.contains("Bad Name"))
        .expect("a diagnostic for the bad pattern");
    assert!(d.line_offset > 0, "the long line was not cut: {d:?}");
    assert!(d.source_line.chars().count() <= 161, "{}", d.source_line.len());
    let text = d.to_string();
    let lines: Vec<&str> = text.lines().collect();
    let (shown, carets) = (lines[1], lines[2]);
    let bar = shown.find("| ").unwrap() + 2;
    let caret_at = carets[bar..].find('^').unwrap();
    let under: String = shown[bar..].chars().skip(caret_at).take(10).collect();
    assert_eq!(under, "\"Bad Name\"", "{text}");
}

#[test]
fn a_hopeless_file_reports_a_bounded_number_of_problems() {
    let junk: String = (0..500).map(|i| format!("junk{i} = 1\n")).collect();
    let Err(PolicyError::Invalid { diagnostics }) = Policy::parse(&format!("{HEAD}{junk}"), "p.toml") else {
        panic!("junk was accepted");
    };
    assert_eq!(diagnostics.len(), 101, "100 problems and one line saying how many more");
    let last = diagnostics.last().unwrap();
    assert!(last.is_error());
    assert!(last.message.contains("more problems not shown"), "{}", last.message);
}
