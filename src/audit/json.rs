//! Hand-written JSON for audit lines: the writer's hot path.
//!
//! Produces exactly the bytes `serde_json` produces for [`LineOut`] (same
//! field order, same omissions, same string escaping), without a serializer
//! state machine and without allocating: strings are copied as they are
//! unless they hold a byte JSON requires escaping, numbers go through `itoa`,
//! UUIDs are encoded on the stack. The unit tests compare both byte for byte,
//! since the hash chain covers the exact bytes and `docs/AUDIT.md` fixes the
//! format. It must never write a line `serde_json` would not.

use uuid::Uuid;

use super::chain::HEX_PAIRS;
use super::record::{LineOut, Plain, Record, WriterFields};

/// Appends `line` as one JSON object (no newline) to `out`.
pub(crate) fn write_line(out: &mut Vec<u8>, line: &LineOut<'_>) {
    out.extend_from_slice(b"{\"seq\":");
    int(out, line.seq);
    out.extend_from_slice(b",\"time\":");
    plain(out, line.time);
    record(out, line.record);
    writer_fields(out, line.writer);
    out.extend_from_slice(b",\"prev\":");
    plain(out, line.prev);
    out.push(b'}');
}

/// A string the writer made itself, which never needs an escape (a time
/// in RFC 3339, a hash in hex): copied without looking at its bytes.
fn plain(out: &mut Vec<u8>, Plain(s): Plain<'_>) {
    debug_assert!(s.is_ascii() && !needs_escape(s), "{s:?} needs escaping");
    out.push(b'"');
    out.extend_from_slice(s);
    out.push(b'"');
}

fn record(out: &mut Vec<u8>, r: &Record) {
    key(out, "event");
    string(out, r.event.as_str());
    opt_uuid(out, "id", r.id.as_ref());
    opt_str(out, "name", r.name.as_deref());
    opt_int(out, "version", r.version.map(u64::from));
    opt_uuid(out, "origin_id", r.origin_id.as_ref());
    opt_uuid(out, "response_to", r.response_to.as_ref());
    opt_str(out, "sender", r.sender.as_deref());
    opt_str(out, "sender_instance", r.sender_instance.as_deref());
    opt_str(out, "receiver", r.receiver.as_deref());
    opt_str(out, "receiver_instance", r.receiver_instance.as_deref());
    opt_str(out, "decision", r.decision.map(|d| d.as_str()));
    opt_str(out, "rule", r.rule.as_deref());
    opt_int(out, "policy_serial", r.policy_serial);
    opt_str(out, "policy_sha256", r.policy_sha256.as_deref());
    opt_int(out, "bytes", r.bytes);
    opt_int(out, "attempt", r.attempt.map(u64::from));
    opt_int(out, "conn", r.conn);
    if let Some(remote) = &r.remote {
        key(out, "remote");
        // A socket address is digits, dots, colons and brackets: nothing to escape.
        out.push(b'"');
        let _ = std::io::Write::write_fmt(out, format_args!("{remote}"));
        out.push(b'"');
    }
    opt_str(out, "identity", r.identity.as_deref());
    opt_str(out, "reason", r.reason.as_deref());
}

fn writer_fields(out: &mut Vec<u8>, w: &WriterFields<'_>) {
    opt_int(out, "segment", w.segment);
    opt_str(out, "file", w.file);
    opt_int(out, "count", w.count);
    opt_int(out, "dropped", w.dropped);
    opt_str(out, "since", w.since);
    if let Some(fail_open) = w.fail_open {
        key(out, "fail_open");
        out.extend_from_slice(if fail_open { b"true" } else { b"false" });
    }
    opt_str(out, "key", w.key);
    opt_str(out, "sig", w.sig);
}

/// `,"<name>":` (every field but `seq` follows another).
fn key(out: &mut Vec<u8>, name: &str) {
    out.extend_from_slice(b",\"");
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b"\":");
}

fn opt_str(out: &mut Vec<u8>, name: &str, value: Option<&str>) {
    if let Some(v) = value {
        key(out, name);
        string(out, v);
    }
}

fn opt_int(out: &mut Vec<u8>, name: &str, value: Option<u64>) {
    if let Some(v) = value {
        key(out, name);
        int(out, v);
    }
}

fn opt_uuid(out: &mut Vec<u8>, name: &str, value: Option<&Uuid>) {
    if let Some(v) = value {
        key(out, name);
        out.extend_from_slice(&hyphenated(v));
    }
}

fn int(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(itoa::Buffer::new().format(v).as_bytes());
}

/// `id` as a quoted JSON string in lowercase hyphenated form, as `uuid`
/// writes it: `"xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx"`.
fn hyphenated(id: &Uuid) -> [u8; 38] {
    let mut text = [b'-'; 38];
    text[0] = b'"';
    text[37] = b'"';
    let mut at = 1;
    for (i, byte) in id.as_bytes().iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            at += 1;
        }
        text[at..at + 2].copy_from_slice(&HEX_PAIRS[usize::from(*byte)]);
        at += 2;
    }
    text
}

/// Whether `bytes` holds a byte JSON requires escaping (`"`, `\`, a
/// control byte), eight bytes at a time: a byte below 0x20 or equal to
/// `"` or `\` shows in the high bit of its lane ("has less than" and
/// "has zero byte" of Bit Twiddling Hacks; exact for whether any lane
/// matches).
fn needs_escape(bytes: &[u8]) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let less = |w: u64, n: u64| w.wrapping_sub(ONES * n) & !w & HIGH;
    let (words, rest) = bytes.as_chunks::<8>();
    let mut found = 0;
    for word in words {
        let w = u64::from_le_bytes(*word);
        found |=
            less(w, 0x20) | less(w ^ (ONES * u64::from(b'"')), 1) | less(w ^ (ONES * u64::from(b'\\')), 1);
    }
    found != 0 || rest.iter().any(|&b| b < 0x20 || b == b'"' || b == b'\\')
}

/// A JSON string, escaped as `serde_json` does: `"` and `\` by a backslash,
/// `\b \f \n \r \t` by name, other control bytes as `\u00XX`; everything else
/// (non-ASCII UTF-8 included) as it is.
fn string(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    let bytes = s.as_bytes();
    // Almost every string needs no escape: check, then copy in one go.
    if !needs_escape(bytes) {
        out.extend_from_slice(bytes);
        out.push(b'"');
        return;
    }
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let named: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0x08 => b"\\b",
            0x0c => b"\\f",
            0x00..=0x1f => b"",
            _ => continue,
        };
        out.extend_from_slice(&bytes[start..i]);
        if named.is_empty() {
            out.extend_from_slice(b"\\u00");
            out.extend_from_slice(&HEX_PAIRS[usize::from(b)]);
        } else {
            out.extend_from_slice(named);
        }
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // Tests may unwrap.
mod tests {
    use super::*;
    use crate::audit::record::{Decision, Event};

    fn both(rec: &Record, fields: &WriterFields<'_>, time: &str) -> (String, String) {
        let line = LineOut {
            seq: 42,
            time: Plain(time.as_bytes()),
            record: rec,
            writer: fields,
            prev: Plain(b"00ff"),
        };
        let mut ours = Vec::new();
        write_line(&mut ours, &line);
        (String::from_utf8(ours).unwrap(), serde_json::to_string(&line).unwrap())
    }

    #[test]
    fn every_field_matches_serde_json_byte_for_byte() {
        let rec = Record::new(Event::Deliver)
            .id(Uuid::now_v7())
            .name("todos.list")
            .version(3u32)
            .origin_id(Uuid::new_v4())
            .response_to(Uuid::max())
            .sender("web")
            .sender_instance("f3db31cc-de15-4daf-a60c-8d3adda42d8a")
            .receiver("todos")
            .receiver_instance("i-2")
            .decision(Decision::Allow)
            .rule("policy.toml:12:3")
            .policy_serial(u64::MAX)
            .policy_sha256("ab".repeat(32))
            .bytes(0u64)
            .attempt(7u32)
            .conn(9u64)
            .remote("[::1]:4222".parse::<std::net::SocketAddr>().unwrap())
            .identity("spiffe://example.org/svc/web")
            .reason("denied: \"quoted\"");
        let fields = WriterFields {
            segment: Some(2),
            file: Some("audit.1.jsonl"),
            count: Some(1000),
            dropped: Some(0),
            since: Some("2026-11-22T10:00:01.500000000Z"),
            fail_open: Some(false),
            key: Some("0011"),
            sig: Some("beef"),
        };
        let (ours, theirs) = both(&rec, &fields, "2026-11-22T10:00:01.500000000Z");
        assert_eq!(ours, theirs);
        let rec = Record::new(Event::Connect).remote("10.0.0.1:80".parse::<std::net::SocketAddr>().unwrap());
        let fields = WriterFields { fail_open: Some(true), ..WriterFields::default() };
        let (ours, theirs) = both(&rec, &fields, "t");
        assert_eq!(ours, theirs);
    }

    #[test]
    fn absent_fields_are_left_out_as_serde_json_does() {
        let (ours, theirs) = both(&Record::new(Event::LogStop), &WriterFields::default(), "t");
        assert_eq!(ours, theirs);
        assert_eq!(ours, r#"{"seq":42,"time":"t","event":"log_stop","prev":"00ff"}"#);
    }

    #[test]
    fn strings_needing_escapes_match_serde_json() {
        let every_control: String = (0u8..0x20).map(char::from).collect();
        for text in [
            "",
            "plain",
            "\"",
            "a\\b",
            "line\nbreak\r\ttab",
            every_control.as_str(),
            "\u{7f} del, é, 日本, 🦀, </script>",
            "end\"",
        ] {
            let rec = Record::new(Event::Alert).reason(text).name(text);
            let (ours, theirs) = both(&rec, &WriterFields::default(), "t");
            assert_eq!(ours, theirs, "{text:?}");
        }
    }

    proptest::proptest! {
        #[test]
        fn any_string_matches_serde_json(text in ".*", bytes in proptest::collection::vec(0u8..0x80, 0..40)) {
            // Arbitrary text, and short ASCII with many control bytes, quotes and backslashes.
            let ascii = String::from_utf8(bytes).unwrap();
            for text in [text.as_str(), ascii.as_str()] {
                let rec = Record::new(Event::Alert).reason(text).sender(text);
                let (ours, theirs) = both(&rec, &WriterFields::default(), "t");
                proptest::prop_assert_eq!(ours, theirs);
            }
        }

        #[test]
        fn the_word_check_is_the_byte_check(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..40)) {
            let bytewise = bytes.iter().any(|&b| b < 0x20 || b == b'"' || b == b'\\');
            proptest::prop_assert_eq!(needs_escape(&bytes), bytewise);
        }

        #[test]
        fn the_word_check_finds_one_byte_of_any_value_anywhere(len in 1usize..40, at in 0usize..40, byte in proptest::num::u8::ANY) {
            let mut bytes = vec![b'x'; len];
            bytes[at % len] = byte;
            let needs = byte < 0x20 || byte == b'"' || byte == b'\\';
            proptest::prop_assert_eq!(needs_escape(&bytes), needs, "{:?}", bytes);
        }

        #[test]
        fn ids_are_written_as_uuid_writes_them(n in proptest::num::u128::ANY) {
            let id = Uuid::from_u128(n);
            proptest::prop_assert_eq!(hyphenated(&id).to_vec(), format!("\"{id}\"").into_bytes());
        }
    }
}
