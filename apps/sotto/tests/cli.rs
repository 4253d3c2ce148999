//! Runs the built `sotto` binary against a real server, checking the CLI contract:
//! command names, `--json` output shapes, stderr messages and exit codes.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;
use sotto_testkit::TestServer;

struct Profile {
    home: PathBuf,
    server: String,
}

impl Profile {
    fn new(server: &TestServer, name: &str) -> Self {
        Self {
            home: server.profile_dir(name),
            server: server.url().to_owned(),
        }
    }

    fn run(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_sotto"))
            .arg("--home")
            .arg(&self.home)
            .args(["--server", &self.server, "--json"])
            .args(args)
            .env_remove("SOTTO_HOME")
            .env_remove("SOTTO_SERVER")
            .output()
            .unwrap()
    }

    /// Runs a command without `--json` that must succeed; answers its stdout.
    fn human(&self, args: &[&str]) -> String {
        let out = Command::new(env!("CARGO_BIN_EXE_sotto"))
            .arg("--home")
            .arg(&self.home)
            .args(["--server", &self.server])
            .args(args)
            .env_remove("SOTTO_HOME")
            .env_remove("SOTTO_SERVER")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Runs a command that must succeed; parses every stdout line as JSON.
    fn ok(&self, args: &[&str]) -> Vec<Value> {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "sotto {args:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|_| panic!("not JSON: {l:?}")))
            .collect()
    }

    fn one(&self, args: &[&str]) -> Value {
        let mut lines = self.ok(args);
        assert_eq!(lines.len(), 1, "{args:?}: {lines:?}");
        lines.remove(0)
    }

    /// Runs a command that must fail with `code`; answers its stderr.
    fn fails(&self, args: &[&str], code: i32) -> String {
        let out = self.run(args);
        assert_eq!(
            out.status.code(),
            Some(code),
            "sotto {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.stdout.is_empty(), "nothing on stdout on failure");
        let stderr = String::from_utf8(out.stderr).unwrap();
        assert_eq!(stderr.trim_end().lines().count(), 1, "one line: {stderr:?}");
        stderr
    }
}

fn texts(lines: &[Value]) -> Vec<(String, String)> {
    lines
        .iter()
        .filter(|l| l.get("event").is_none())
        .map(|l| {
            (
                l["sender"].as_str().unwrap().to_owned(),
                l["text"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect()
}

fn exists(p: &Path) -> bool {
    p.join("profile.db").exists()
}

#[test]
fn register_send_receive_history_and_errors() {
    let server = TestServer::start().unwrap();
    let alice = Profile::new(&server, "alice");
    let bob = Profile::new(&server, "bob");

    let me = alice.one(&["register", "alice"]);
    assert_eq!(me["username"], "alice");
    assert_eq!(me["device_id"].as_str().unwrap().len(), 32);
    assert!(exists(&alice.home));
    bob.one(&["register", "bob"]);
    let who = alice.one(&["whoami"]);
    assert_eq!(who["device_id"], me["device_id"]);
    let fingerprint = who["fingerprint"].as_str().unwrap();
    assert_eq!(
        fingerprint.chars().filter(char::is_ascii_digit).count(),
        30,
        "{fingerprint}"
    );

    // Registering twice, a taken name, a bad name, a missing user.
    let err = alice.fails(&["register", "alice2"], 2);
    assert!(err.contains("already has an account"), "{err}");
    let carol = Profile::new(&server, "carol");
    let err = carol.fails(&["register", "alice"], 1);
    assert!(err.contains("already taken"), "{err}");
    let err = carol.fails(&["register", "No Spaces"], 2);
    assert!(err.contains("invalid username"), "{err}");
    let err = alice.fails(&["send", "nobody", "hi"], 3);
    assert!(err.contains("no user named nobody"), "{err}");
    let err = carol.fails(&["whoami"], 2);
    assert!(err.contains("sotto register"), "{err}");

    let sent = alice.one(&["send", "bob", "hello bob"]);
    let conversation = sent["conversation"].as_str().unwrap().to_owned();
    assert!(sent["id"].as_str().unwrap().len() == 36);

    let received = bob.ok(&["receive"]);
    let messages: Vec<&Value> = received
        .iter()
        .filter(|l| l.get("event").is_none())
        .collect();
    assert_eq!(messages.len(), 1, "{received:?}");
    let m = messages[0];
    for field in [
        "id",
        "conversation",
        "sender",
        "sender_device",
        "kind",
        "text",
        "sent_at",
    ] {
        assert!(m.get(field).is_some(), "receive JSON lacks {field}: {m}");
    }
    assert_eq!(m["id"], sent["id"]);
    assert_eq!(m["conversation"], conversation.as_str());
    assert_eq!(m["sender"], "alice");
    assert_eq!(m["sender_device"], me["device_id"]);
    assert_eq!(m["kind"], "text");
    assert_eq!(m["text"], "hello bob");
    // Nothing twice.
    assert!(texts(&bob.ok(&["receive"])).is_empty());

    bob.one(&["send", &conversation, "hi alice"]);
    assert_eq!(
        texts(&alice.ok(&["receive"])),
        [("bob".to_owned(), "hi alice".to_owned())]
    );

    let convs = bob.ok(&["conversations"]);
    assert_eq!(convs.len(), 1);
    assert_eq!(convs[0]["id"], conversation.as_str());
    assert_eq!(convs[0]["kind"], "direct");
    assert_eq!(convs[0]["members"], serde_json::json!(["alice", "bob"]));
    assert_eq!(convs[0]["unread"], 1);

    let history = alice.ok(&["history", &conversation]);
    let lines: Vec<(String, String)> = texts(&history);
    assert_eq!(
        lines,
        [
            ("alice".to_owned(), "hello bob".to_owned()),
            ("bob".to_owned(), "hi alice".to_owned())
        ]
    );
    assert_eq!(history[0]["outgoing"], true);
    let err = alice.fails(&["history", "00000000000000000000000000000000"], 3);
    assert!(err.contains("no conversation"), "{err}");

    // Edit, react, delete, disappearing.
    let first = history[0]["id"].as_str().unwrap().to_owned();
    alice.one(&["edit", &conversation, &first, "hello bob (edited)"]);
    bob.one(&["react", &conversation, &first, "👍"]);
    let events = bob.ok(&["receive"]);
    assert!(
        events
            .iter()
            .any(|e| e["event"] == "edited" && e["text"] == "hello bob (edited)"),
        "{events:?}"
    );
    let err = bob.fails(&["edit", &conversation, &first, "not mine"], 2);
    assert!(err.contains("your own messages"), "{err}");
    let events = alice.ok(&["receive"]);
    assert!(
        events
            .iter()
            .any(|e| e["event"] == "reaction" && e["emoji"] == "👍"),
        "{events:?}"
    );
    alice.one(&["delete", &conversation, &first]);
    bob.ok(&["receive"]);
    let history = bob.ok(&["history", &conversation]);
    assert_eq!(history[0]["deleted"], true);
    assert!(history[0]["text"].is_null());
    // A file, saved under --output.
    let files = tempfile::tempdir().unwrap();
    let photo = files.path().join("photo.png");
    let bytes: Vec<u8> = (0..300_000u32).map(|i| (i % 253) as u8).collect();
    std::fs::write(&photo, &bytes).unwrap();
    let sent = alice.one(&["send", "bob", "--file", photo.to_str().unwrap(), "a photo"]);
    let out_dir = files.path().join("inbox");
    let got = bob.ok(&["receive", "--output", out_dir.to_str().unwrap()]);
    let m = got.iter().find(|l| l["id"] == sent["id"]).unwrap();
    assert_eq!(m["kind"], "attachment");
    assert_eq!(m["text"], "a photo");
    assert_eq!(m["attachment"]["name"], "photo.png");
    assert_eq!(m["attachment"]["size"], 300_000);
    let path = m["attachment"]["path"].as_str().unwrap();
    assert!(path.starts_with(out_dir.to_str().unwrap()), "{path}");
    assert_eq!(std::fs::read(path).unwrap(), bytes);

    let timer = alice.one(&["disappearing", &conversation, "1h"]);
    assert_eq!(timer["seconds"], 3600);
    let err = alice.fails(&["disappearing", &conversation, "soon"], 2);
    assert!(err.contains("not a duration"), "{err}");
}

#[test]
fn groups_and_safety_numbers() {
    let server = TestServer::start().unwrap();
    let users: Vec<Profile> = ["alice", "bob", "carol", "dave"]
        .iter()
        .map(|n| {
            let p = Profile::new(&server, n);
            p.one(&["register", n]);
            p
        })
        .collect();
    let (alice, bob, carol, dave) = (&users[0], &users[1], &users[2], &users[3]);

    let created = alice.one(&["group", "create", "club", "--members", "bob,carol"]);
    let g = created["conversation"].as_str().unwrap().to_owned();
    alice.one(&["send", &g, "welcome"]);
    for u in [bob, carol] {
        let got = u.ok(&["receive"]);
        assert!(
            got.iter()
                .any(|e| e["event"] == "group_name" && e["name"] == "club"),
            "{got:?}"
        );
        assert_eq!(texts(&got), [("alice".to_owned(), "welcome".to_owned())]);
        let convs = u.ok(&["conversations"]);
        assert_eq!(convs[0]["name"], "club");
        assert_eq!(convs[0]["kind"], "group");
    }
    bob.one(&["group", "add", &g, "dave"]);
    let joined = dave.ok(&["receive"]);
    assert!(
        joined
            .iter()
            .any(|e| e["event"] == "joined" && e["by"] == "bob"),
        "{joined:?}"
    );
    let members = dave.one(&["group", "members", &g]);
    let names: Vec<&str> = members["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["user"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["alice", "bob", "carol", "dave"]);
    assert_eq!(
        members["members"][0]["devices"].as_array().unwrap().len(),
        1
    );
    carol.one(&["group", "remove", &g, "dave"]);
    dave.one(&["group", "leave", &g]).to_string();
    alice.one(&["send", &g, "without dave"]);
    assert!(texts(&dave.ok(&["receive"])).is_empty());
    assert_eq!(
        texts(&bob.ok(&["receive"])),
        [("alice".to_owned(), "without dave".to_owned())]
    );

    // Safety numbers: the same 60 digits on both sides; verify checks them.
    let a = alice.one(&["safety-number", "bob"]);
    let b = bob.one(&["safety-number", "alice"]);
    let digits = a["safety_number"].as_str().unwrap().to_owned();
    assert_eq!(digits.len(), 60);
    assert_eq!(a["safety_number"], b["safety_number"]);
    let mut wrong = digits.clone();
    wrong.replace_range(59..60, if digits.ends_with('0') { "1" } else { "0" });
    let err = alice.fails(&["verify", "bob", &wrong], 4);
    assert!(err.contains("does not match"), "{err}");
    let ok = alice.one(&["verify", "bob", &digits]);
    assert_eq!(ok["verified"], true);
}

#[test]
fn help_documents_exit_codes() {
    let out = Command::new(env!("CARGO_BIN_EXE_sotto"))
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8(out.stdout).unwrap();
    assert!(help.contains("Exit codes:"), "{help}");
    for cmd in [
        "register",
        "whoami",
        "send",
        "receive",
        "conversations",
        "history",
        "group",
        "safety-number",
        "verify",
        "react",
        "edit",
        "delete",
        "disappearing",
        "recover",
        "trust",
        "devices",
    ] {
        assert!(help.contains(cmd), "--help lacks {cmd}");
    }
    for code in [
        "7  the recipient's safety number changed",
        "8  the recipient has no current device",
    ] {
        assert!(help.contains(code), "--help lacks exit code {code}");
    }
    let register = Command::new(env!("CARGO_BIN_EXE_sotto"))
        .args(["register", "--help"])
        .output()
        .unwrap();
    let register = String::from_utf8(register.stdout).unwrap();
    assert!(
        register.contains("--device-name") && register.contains("recovery key"),
        "{register}"
    );
}

/// `receive` is SIGKILLed at random moments while messages arrive; afterwards every
/// message is in the history exactly once, and no message was ever printed twice.
#[test]
fn a_receiver_killed_at_random_points_loses_nothing_and_shows_nothing_twice() {
    use std::time::Duration;

    let server = TestServer::start().unwrap();
    let alice = Profile::new(&server, "alice");
    let bob = Profile::new(&server, "bob");
    alice.one(&["register", "alice"]);
    bob.one(&["register", "bob"]);
    let first = alice.one(&["send", "bob", "message 0"]);
    let conversation = first["conversation"].as_str().unwrap().to_owned();

    let total = 60;
    let sender = {
        let (home, url) = (alice.home.clone(), alice.server.clone());
        let conversation = conversation.clone();
        std::thread::spawn(move || {
            let alice = Profile { home, server: url };
            for i in 1..total {
                alice.one(&["send", &conversation, &format!("message {i}")]);
            }
        })
    };

    let mut seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        ^ 0x9e37_79b9_7f4a_7c15;
    println!("seed {seed}");
    let mut printed: Vec<String> = Vec::new();
    let mut kills = 0;
    while !sender.is_finished() || kills < 15 {
        seed = seed
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        let delay = Duration::from_millis((seed >> 33) % 120);
        let mut child = Command::new(env!("CARGO_BIN_EXE_sotto"))
            .arg("--home")
            .arg(&bob.home)
            .args(["--server", &bob.server, "--json", "receive"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(delay);
        let _ = child.kill();
        kills += 1;
        let out = child.wait_with_output().unwrap();
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            // A line cut by the kill is not a complete message.
            if let Ok(v) = serde_json::from_str::<Value>(line)
                && v.get("event").is_none()
            {
                printed.push(v["id"].as_str().unwrap().to_owned());
            }
        }
    }
    sender.join().unwrap();
    println!(
        "{kills} kills, {} messages printed before the last receive",
        printed.len()
    );
    for v in bob.ok(&["receive"]) {
        if v.get("event").is_none() {
            printed.push(v["id"].as_str().unwrap().to_owned());
        }
    }
    let mut unique = printed.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(
        unique.len(),
        printed.len(),
        "a message was printed twice after {kills} kills"
    );

    let history: Vec<String> = bob
        .ok(&["history", &conversation])
        .into_iter()
        .map(|m| m["text"].as_str().unwrap().to_owned())
        .collect();
    let expected: Vec<String> = (0..total).map(|i| format!("message {i}")).collect();
    assert_eq!(history, expected, "after {kills} kills");
}

#[test]
fn link_start_prints_a_code_first_and_approve_links_the_device() {
    use std::io::{BufRead, BufReader};

    let server = TestServer::start().unwrap();
    let alice = Profile::new(&server, "alice");
    let laptop = Profile::new(&server, "alice-laptop");
    let bob = Profile::new(&server, "bob");
    alice.one(&["register", "alice"]);
    bob.one(&["register", "bob"]);
    let conversation = alice.one(&["send", "bob", "hi"])["conversation"]
        .as_str()
        .unwrap()
        .to_owned();

    let mut start = Command::new(env!("CARGO_BIN_EXE_sotto"))
        .arg("--home")
        .arg(&laptop.home)
        .args(["--server", &laptop.server, "--json", "link", "start"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(start.stdout.take().unwrap()).lines();
    let first: Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    let code = first["code"].as_str().unwrap().to_owned();
    let approved = alice.one(&["link", "approve", &code]);
    let linked: Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    assert!(start.wait().unwrap().success());
    assert_eq!(linked["username"], "alice");
    assert_eq!(linked["device_id"], approved["device_id"]);

    let devices = alice.ok(&["devices"]);
    assert_eq!(devices.len(), 2);
    laptop.ok(&["receive"]);
    bob.one(&["send", &conversation, "hello both"]);
    for p in [&alice, &laptop] {
        assert_eq!(
            texts(&p.ok(&["receive"])),
            [("bob".to_owned(), "hello both".to_owned())]
        );
    }
    let laptop_id = approved["device_id"].as_str().unwrap();
    let err = alice.fails(
        &["devices", "remove", "0123456789abcdef0123456789abcdef"],
        2,
    );
    assert!(err.contains("not one of your devices"), "{err}");
    alice.one(&["devices", "remove", laptop_id]);
    assert_eq!(alice.ok(&["devices"]).len(), 1);
    let err = laptop.fails(&["receive"], 1);
    assert!(
        err.contains("unauthorized") || err.contains("token"),
        "{err}"
    );
}

#[test]
fn receive_follow_prints_messages_as_they_arrive() {
    use std::io::{BufRead, BufReader};

    let server = TestServer::start().unwrap();
    let alice = Profile::new(&server, "alice");
    let bob = Profile::new(&server, "bob");
    alice.one(&["register", "alice"]);
    bob.one(&["register", "bob"]);
    let mut follow = Command::new(env!("CARGO_BIN_EXE_sotto"))
        .arg("--home")
        .arg(&bob.home)
        .args(["--server", &bob.server, "--json", "receive", "--follow"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let stdout = follow.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            let _ = tx.send(line);
        }
    });
    let next_message = || loop {
        let line = rx
            .recv_timeout(std::time::Duration::from_secs(30))
            .expect("no line within 30 s");
        let v: Value = serde_json::from_str(&line).unwrap();
        if v.get("event").is_none() {
            return v;
        }
    };
    for i in 0..3 {
        alice.one(&["send", "bob", &format!("live {i}")]);
        let m = next_message();
        assert_eq!(m["text"], format!("live {i}"));
        assert_eq!(m["sender"], "alice");
    }
    // Ctrl-C ends it cleanly.
    let status = Command::new("kill")
        .args(["-INT", &follow.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    assert!(follow.wait().unwrap().success());
}

#[test]
fn talks_to_an_https_server_when_told_to_trust_its_certificate() {
    let (server, ca) = TestServer::start_tls().unwrap();
    let dir = server.profile_dir("certs");
    let ca_path = dir.join("ca.pem");
    std::fs::write(&ca_path, &ca).unwrap();
    let alice = Profile::new(&server, "alice");
    let bob = Profile::new(&server, "bob");
    // Without the certificate: a one-line network error.
    let err = alice.fails(&["register", "alice"], 1);
    assert!(err.contains("cannot reach the server"), "{err}");
    let with_ca = |p: &Profile, args: &[&str]| -> Vec<Value> {
        let mut all = vec!["--ca-cert", ca_path.to_str().unwrap()];
        all.extend_from_slice(args);
        p.ok(&all)
    };
    with_ca(&alice, &["register", "alice"]);
    with_ca(&bob, &["register", "bob"]);
    with_ca(&alice, &["send", "bob", "over https"]);
    assert_eq!(
        texts(&with_ca(&bob, &["receive"])),
        [("alice".to_owned(), "over https".to_owned())]
    );
    let missing = alice.fails(&["--ca-cert", "/nonexistent/ca.pem", "whoami"], 2);
    assert!(
        missing.contains("cannot read the CA certificate"),
        "{missing}"
    );
}

/// A send that keeps losing the conversation's epoch exits 6 ("busy, try again"), not
/// 2 ("bad usage"), with one line that says to try again.
#[test]
fn a_conversation_that_keeps_changing_exits_6() {
    let (server, lying) = TestServer::start_lying().unwrap();
    let alice = Profile::new(&server, "alice");
    let bob = Profile::new(&server, "bob");
    alice.ok(&["register", "alice"]);
    bob.ok(&["register", "bob"]);
    alice.ok(&["send", "bob", "first"]);
    lying.refuse_messages_as_stale(true);
    let stderr = alice.fails(&["send", "bob", "second"], 6);
    assert!(stderr.contains("try again"), "{stderr}");
    let help = Command::new(env!("CARGO_BIN_EXE_sotto"))
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(help.contains("  6  busy"), "{help}");
}

/// Without `--home`, the profile lives in the platform's data directory
/// (`$XDG_DATA_HOME/sotto` on Linux).
#[test]
fn the_default_profile_is_in_the_data_directory() {
    let server = TestServer::start().unwrap();
    let data = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_sotto"))
        .args(["--server", server.url(), "--json", "register", "xdg-user"])
        .env_remove("SOTTO_HOME")
        .env_remove("SOTTO_SERVER")
        .env("XDG_DATA_HOME", data.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let profile = data.path().join("sotto");
    assert!(
        profile.is_dir() && std::fs::read_dir(&profile).unwrap().next().is_some(),
        "no profile in {}",
        profile.display()
    );
}

/// Issue 12: a member's text could forge lines (another sender's message, a
/// `SECURITY:` line) and send terminal escapes. Human output shows them escaped, on
/// the message's own line; JSON output keeps the text exactly.
#[test]
fn peer_text_is_shown_escaped_and_cannot_forge_lines() {
    let server = TestServer::start().unwrap();
    let alice = Profile::new(&server, "alice");
    let bob = Profile::new(&server, "bob");
    alice.one(&["register", "alice"]);
    bob.one(&["register", "bob"]);
    let forged = "see you\n[00000000000000000000000000000000] SECURITY: carol's key changed\x1b[2J";
    alice.one(&["send", "bob", forged]);
    let out = bob.human(&["receive"]);
    let lines: Vec<&str> = out
        .lines()
        .filter(|l| !l.ends_with("alice added you"))
        .collect();
    assert_eq!(lines.len(), 1, "one line for the message: {out:?}");
    assert!(!out.contains('\x1b'), "no raw escape: {out:?}");
    assert!(lines[0].contains("alice: see you\\n[0000"), "{out:?}");
    // History shows it the same way; JSON keeps the exact text.
    let history = bob.human(&["history", "alice"]);
    assert_eq!(history.lines().count(), 1, "{history:?}");
    let json = bob.ok(&["history", "alice"]);
    assert_eq!(json[0]["text"], forged);
}

/// Issue 12: a lost phone comes back with the recovery key. `register` shows the key
/// once; `recover` on a new profile restores the account (a wrong or mistyped key is
/// refused); the contact is told and the conversation continues on the new device.
#[test]
fn a_lost_phone_comes_back_with_the_recovery_key() {
    let server = TestServer::start().unwrap();
    let alice = Profile::new(&server, "alice");
    let bob = Profile::new(&server, "bob");
    let carol = Profile::new(&server, "carol");
    let registered = alice.one(&["register", "alice", "--device-name", "phone"]);
    let key = registered["recovery_key"].as_str().unwrap().to_owned();
    assert_eq!(key.len(), 65, "{key}");
    let human = carol.human(&["register", "carol"]);
    assert!(human.contains("recovery key"), "{human}");
    let carol_key = human
        .lines()
        .find(|l| l.starts_with("    "))
        .unwrap()
        .trim()
        .to_owned();
    bob.one(&["register", "bob"]);
    alice.one(&["send", "bob", "hello bob"]);
    bob.ok(&["receive"]);

    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path.to_str().unwrap().to_owned()
    };
    let new_phone = Profile::new(&server, "alice-new");
    let typo = write(
        "typo",
        &key.replacen(&key[..1], if &key[..1] == "A" { "B" } else { "A" }, 1),
    );
    let err = new_phone.fails(&["recover", "alice", "--recovery-key-file", &typo], 2);
    assert!(err.contains("typo"), "{err}");
    let wrong = write("wrong", &carol_key);
    let err = new_phone.fails(&["recover", "alice", "--recovery-key-file", &wrong], 5);
    assert!(err.contains("not alice's"), "{err}");
    let right = write("right", &key);
    let back = new_phone.one(&[
        "recover",
        "alice",
        "--recovery-key-file",
        &right,
        "--device-name",
        "new phone",
    ]);
    assert_eq!(back["recovered"], true);
    assert_eq!(new_phone.one(&["whoami"])["primary"], true);

    let lines = bob.ok(&["receive"]);
    assert!(
        lines
            .iter()
            .any(|l| l["event"] == "contact"
                && l["detail"].as_str().unwrap().contains("re-established")),
        "{lines:?}"
    );
    bob.one(&["send", "alice", "welcome back"]);
    let got = new_phone.ok(&["receive"]);
    assert_eq!(texts(&got), [("bob".to_owned(), "welcome back".to_owned())]);
    // The lost phone, if found, is no longer the account's.
    alice.fails(&["send", "bob", "still me?"], 1);
}

/// Issue 12: a lost phone without the recovery key. The operator releases the name;
/// until bob registers again, sends to him fail with exit 8; after, with exit 7 and
/// a message that says what to do; `safety-number` shows the new number; `trust`
/// accepts it and the existing conversation continues with bob's new device.
#[test]
fn a_lost_phone_without_the_recovery_key_comes_back_through_trust() {
    let server = TestServer::start().unwrap();
    let alice = Profile::new(&server, "alice");
    let bob = Profile::new(&server, "bob");
    alice.one(&["register", "alice"]);
    bob.one(&["register", "bob"]);
    let conv = alice.one(&["send", "bob", "hello bob"])["conversation"]
        .as_str()
        .unwrap()
        .to_owned();
    bob.ok(&["receive"]);

    server.release_username("bob").unwrap();
    let lines = alice.ok(&["receive"]);
    assert!(
        lines.iter().any(|l| l["event"] == "contact"
            && l["detail"].as_str().unwrap().contains("no longer exists")),
        "{lines:?}"
    );
    let err = alice.fails(&["send", "bob", "are you there?"], 8);
    assert!(err.contains("no longer exists"), "{err}");

    let bob2 = Profile::new(&server, "bob-new");
    bob2.one(&["register", "bob"]);
    let err = alice.fails(&["send", "bob", "is it you?"], 7);
    assert!(
        err.contains("safety number changed") && err.contains("sotto trust USER"),
        "{err}"
    );
    let numbers = alice.one(&["safety-number", "bob"]);
    assert!(numbers["new_safety_number"].is_string(), "{numbers}");
    assert_ne!(numbers["new_safety_number"], numbers["safety_number"]);

    let trusted = alice.one(&["trust", "bob"]);
    assert_eq!(trusted["new_key"], true);
    let sent = alice.one(&["send", "bob", "welcome back, bob"]);
    assert_eq!(sent["conversation"], conv.as_str(), "the same conversation");
    let got = bob2.ok(&["receive"]);
    assert_eq!(
        texts(&got),
        [("alice".to_owned(), "welcome back, bob".to_owned())]
    );
}
