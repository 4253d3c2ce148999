//! The HTTP API through `app()` with the in-memory store and a manual clock.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use common::harness::{Harness, T0, assert_error};
use common::{Identity, app_bytes, b64, commit_bytes, dev, group, message_id, welcome_bytes};
use serde_json::{Value, json};
use sotto_server::ServerConfig;

/// A bad-input case: method, uri, token, body, expected status and code.
type Case<'a> = (
    Method,
    String,
    Option<&'a str>,
    Vec<u8>,
    StatusCode,
    &'a str,
);

#[tokio::test]
async fn healthz_answers_ok() {
    let h = Harness::new();
    let (status, body) = h
        .send(Request::get("/healthz").body(Body::empty()).unwrap())
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, b"ok");
}

#[tokio::test]
async fn register_lookup_and_username_taken() {
    let h = Harness::new();
    let alice = h.register("alice", 1, 1).await;

    let (status, body) = h
        .call(Method::GET, "/v1/accounts/alice", Some(&alice.token), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["username"], "alice");
    assert_eq!(body["identity_key"], b64(alice.identity.pk.as_bytes()));
    assert_eq!(
        body["device_list"],
        b64(&alice.identity.list(1, &[alice.device]).to_bytes())
    );

    // Same name, another key and device: taken.
    let other = Identity::new("alice", 9);
    let (status, body) = h
        .call(
            Method::POST,
            "/v1/accounts",
            None,
            Some(json!({"username": "alice", "device_list": other.list(1, &[dev(9)])})),
        )
        .await;
    assert_error(status, &body, StatusCode::CONFLICT, "username_taken");

    let (status, body) = h
        .call(Method::GET, "/v1/accounts/nobody", Some(&alice.token), None)
        .await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "unknown_user");
}

#[tokio::test]
async fn registration_refuses_bad_device_lists() {
    let h = Harness::new();
    let carol = Identity::new("carol", 3);
    // Two devices.
    let (status, body) = h
        .call(
            Method::POST,
            "/v1/accounts",
            None,
            Some(json!({"username": "carol", "device_list": carol.list(1, &[dev(3), dev(4)])})),
        )
        .await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "bad_request");
    // The list names another user.
    let (status, body) = h
        .call(
            Method::POST,
            "/v1/accounts",
            None,
            Some(json!({"username": "dave", "device_list": carol.list(1, &[dev(3)])})),
        )
        .await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "bad_request");
    // Version 0.
    let (status, body) = h
        .call(
            Method::POST,
            "/v1/accounts",
            None,
            Some(json!({"username": "carol", "device_list": carol.list(0, &[dev(3)])})),
        )
        .await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "bad_request");
    // Signed by a key other than the one it names.
    let mallory = Identity::new("carol", 66);
    let forged = carol.list_signed_by(&mallory.sk, carol.pk, 1, &[dev(3)]);
    let (status, body) = h
        .call(
            Method::POST,
            "/v1/accounts",
            None,
            Some(json!({"username": "carol", "device_list": forged})),
        )
        .await;
    assert!(status.is_client_error(), "{status} {body}");
    assert!(body["error"]["code"].is_string());
    assert_eq!(h.state.store().stats().await.unwrap().accounts, 0);
}

#[tokio::test]
async fn key_packages_upload_count_and_claim() {
    let h = Harness::new();
    let alice = h.register("alice", 1, 1).await;
    let bob = h.register("bob", 2, 2).await;

    let (status, body) = h
        .call(Method::GET, "/v1/key-packages", Some(&bob.token), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        body,
        json!({"one_time_remaining": 0, "has_last_resort": false})
    );

    let (status, body) = h
        .call(
            Method::POST,
            "/v1/key-packages",
            Some(&bob.token),
            Some(json!({"one_time": [b64(b"kp1"), b64(b"kp2")], "last_resort": b64(b"last")})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body,
        json!({"one_time_remaining": 2, "has_last_resort": true})
    );

    let claim = || async {
        h.call(
            Method::POST,
            "/v1/key-packages/claim",
            Some(&alice.token),
            Some(json!({"username": "bob"})),
        )
        .await
    };
    for expected in [b"kp1".as_slice(), b"kp2", b"last", b"last"] {
        let (status, body) = claim().await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(
            body["key_packages"],
            json!([{"device_id": bob.device, "key_package": b64(expected)}])
        );
    }
    let (_, body) = h
        .call(Method::GET, "/v1/key-packages", Some(&bob.token), None)
        .await;
    assert_eq!(
        body,
        json!({"one_time_remaining": 0, "has_last_resort": true})
    );

    let (status, body) = h
        .call(
            Method::POST,
            "/v1/key-packages/claim",
            Some(&alice.token),
            Some(json!({"username": "nobody"})),
        )
        .await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "unknown_user");

    // Too many at once.
    let many: Vec<String> = (0..201).map(|i: u32| b64(&i.to_be_bytes())).collect();
    let (status, body) = h
        .call(
            Method::POST,
            "/v1/key-packages",
            Some(&bob.token),
            Some(json!({"one_time": many})),
        )
        .await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "bad_request");
}

#[tokio::test]
async fn groups_create_show_and_conflicts() {
    let h = Harness::new();
    let alice = h.register("alice", 1, 1).await;
    let bob = h.register("bob", 2, 2).await;
    let g = group(7);
    h.create_group(&alice, g).await;

    let (status, body) = h
        .call(
            Method::POST,
            "/v1/groups",
            Some(&bob.token),
            Some(json!({"group_id": g})),
        )
        .await;
    assert_error(status, &body, StatusCode::CONFLICT, "group_exists");

    let (status, body) = h
        .call(
            Method::GET,
            &format!("/v1/groups/{g}"),
            Some(&alice.token),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, json!({"epoch": 0, "members": [alice.device]}));

    let (status, body) = h
        .call(
            Method::GET,
            &format!("/v1/groups/{g}"),
            Some(&bob.token),
            None,
        )
        .await;
    assert_error(status, &body, StatusCode::FORBIDDEN, "not_a_member");

    let (status, body) = h
        .call(
            Method::GET,
            &format!("/v1/groups/{}", group(8)),
            Some(&bob.token),
            None,
        )
        .await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "unknown_group");
}

#[tokio::test]
async fn a_commit_is_accepted_once_per_epoch() {
    let h = Harness::new();
    let g = group(1);
    let (alice, bob) = h.alice_and_bob_in_group(g).await;

    // bob got the Welcome, alice (the committer) nothing.
    let entries = h.mailbox(&bob).await;
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0]["kind"], "welcome");
    assert_eq!(entries[0]["group"], g.to_string());
    assert_eq!(entries[0]["body"], b64(&welcome_bytes()));
    assert!(h.mailbox(&alice).await.is_empty());

    // A second commit for epoch 0 is stale.
    let (status, body) = h.commit(&bob, g, 0, &[]).await;
    assert_error(status, &body, StatusCode::CONFLICT, "stale_epoch");
    assert_eq!(body["error"]["current_epoch"], 1);

    // bob commits at epoch 1: alice receives the commit.
    let (status, body) = h.commit(&bob, g, 1, &[]).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["epoch"], 2);
    let entries = h.mailbox(&alice).await;
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0]["kind"], "commit");
    assert_eq!(entries[0]["body"], b64(&commit_bytes(g, 1)));
    assert_eq!(entries[0]["received_at"], T0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_racing_commits_for_one_epoch_yield_exactly_one_winner() {
    let h = Arc::new(Harness::new());
    let g = group(2);
    let (alice, _bob) = h.alice_and_bob_in_group(g).await;
    let alice = Arc::new(alice);
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let h = h.clone();
        let alice = alice.clone();
        tasks.push(tokio::spawn(
            async move { h.commit(&alice, g, 1, &[]).await },
        ));
    }
    let mut ok = 0;
    for t in tasks {
        let (status, body) = t.await.unwrap();
        if status == StatusCode::OK {
            ok += 1;
            assert_eq!(body["epoch"], 2);
        } else {
            assert_error(status, &body, StatusCode::CONFLICT, "stale_epoch");
            assert_eq!(body["error"]["current_epoch"], 2);
        }
    }
    assert_eq!(ok, 1);
    let (_, body) = h
        .call(
            Method::GET,
            &format!("/v1/groups/{g}"),
            Some(&alice.token),
            None,
        )
        .await;
    assert_eq!(body["epoch"], 2);
}

#[tokio::test]
async fn authentication_and_authorization() {
    let h = Harness::new();
    let g = group(3);
    let (alice, _bob) = h.alice_and_bob_in_group(g).await;
    let eve = h.register("eve", 5, 5).await;

    // No token, garbage token, well-formed unknown token.
    for token in [
        None,
        Some("not a token"),
        Some("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"),
    ] {
        let (status, body) = h.call(Method::GET, "/v1/mailbox", token, None).await;
        assert_error(status, &body, StatusCode::UNAUTHORIZED, "unauthorized");
    }
    let resp = h
        .send(
            Request::get("/v1/mailbox")
                .header(header::AUTHORIZATION, "Basic abc")
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(resp.0, StatusCode::UNAUTHORIZED);

    // A non-member can neither post nor commit.
    let (status, body) = h.send_message(&eve, g, 1, 1).await;
    assert_error(status, &body, StatusCode::FORBIDDEN, "not_a_member");
    let (status, body) = h.commit(&eve, g, 1, &[]).await;
    assert_error(status, &body, StatusCode::FORBIDDEN, "not_a_member");

    // A device list for alice signed by eve's key is refused, whichever key it names.
    let forged = alice.identity.list_signed_by(
        &eve.identity.sk,
        eve.identity.pk,
        2,
        &[alice.device, dev(50)],
    );
    let (status, body) = h
        .call(
            Method::PUT,
            "/v1/devices",
            Some(&alice.token),
            Some(json!({"device_list": forged})),
        )
        .await;
    assert_error(status, &body, StatusCode::FORBIDDEN, "forbidden");
    let forged = alice.identity.list_signed_by(
        &eve.identity.sk,
        alice.identity.pk,
        2,
        &[alice.device, dev(50)],
    );
    let (status, body) = h
        .call(
            Method::PUT,
            "/v1/devices",
            Some(&alice.token),
            Some(json!({"device_list": forged})),
        )
        .await;
    assert!(status.is_client_error(), "{status} {body}");
    assert!(body["error"]["code"].is_string());
    // eve cannot publish a list for alice's account with her own token either: the list
    // is checked against the caller's account.
    let (status, body) = h
        .call(
            Method::PUT,
            "/v1/devices",
            Some(&eve.token),
            Some(json!({"device_list": alice.identity.list(2, &[alice.device])})),
        )
        .await;
    assert!(status.is_client_error(), "{status} {body}");
    assert_eq!(h.state.store().stats().await.unwrap().devices, 3);
}

#[tokio::test]
async fn linking_and_removing_devices() {
    let h = Harness::new();
    let alice = h.register("alice", 1, 1).await;
    let laptop = dev(11);

    // Link a second device: it gets a token that works.
    let (status, body) = h
        .call(
            Method::PUT,
            "/v1/devices",
            Some(&alice.token),
            Some(json!({"device_list": alice.identity.list(2, &[alice.device, laptop])})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["version"], 2);
    assert_eq!(body["new_device_id"], laptop.to_string());
    assert_eq!(body["removed"], json!([]));
    let laptop_token = body["new_device_token"].as_str().unwrap().to_owned();
    let (status, _) = h
        .call(Method::GET, "/v1/mailbox", Some(&laptop_token), None)
        .await;
    assert_eq!(status, StatusCode::OK);

    // Same version again: refused.
    let (status, body) = h
        .call(
            Method::PUT,
            "/v1/devices",
            Some(&alice.token),
            Some(json!({"device_list": alice.identity.list(2, &[alice.device, laptop])})),
        )
        .await;
    assert_error(
        status,
        &body,
        StatusCode::CONFLICT,
        "version_not_increasing",
    );

    // A jump in the version (a stolen account key racing to the top of the range so
    // that a recovery finds no version left): refused, one step at a time only.
    let (status, body) = h
        .call(
            Method::PUT,
            "/v1/devices",
            Some(&alice.token),
            Some(
                json!({"device_list": alice.identity.list(u64::MAX - 1, &[alice.device, laptop])}),
            ),
        )
        .await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "bad_request");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("must be 3")
    );

    // Two new devices at once: refused.
    let (status, body) = h
        .call(
            Method::PUT,
            "/v1/devices",
            Some(&alice.token),
            Some(json!({"device_list": alice.identity.list(3, &[alice.device, laptop, dev(12), dev(13)])})),
        )
        .await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "bad_request");

    // Removing every device: refused.
    let (status, body) = h
        .call(
            Method::PUT,
            "/v1/devices",
            Some(&alice.token),
            Some(json!({"device_list": alice.identity.list(3, &[])})),
        )
        .await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "bad_request");

    // The phone removes the laptop: its token dies at once.
    let (status, body) = h
        .call(
            Method::PUT,
            "/v1/devices",
            Some(&alice.token),
            Some(json!({"device_list": alice.identity.list(3, &[alice.device])})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["removed"], json!([laptop]));
    assert!(body.get("new_device_token").is_none());
    let (status, body) = h
        .call(Method::GET, "/v1/mailbox", Some(&laptop_token), None)
        .await;
    assert_error(status, &body, StatusCode::UNAUTHORIZED, "unauthorized");

    // The directory shows the new list.
    let (_, body) = h
        .call(Method::GET, "/v1/accounts/alice", Some(&alice.token), None)
        .await;
    assert_eq!(
        body["device_list"],
        b64(&alice.identity.list(3, &[alice.device]).to_bytes())
    );
}

#[tokio::test]
async fn a_device_may_remove_itself_when_another_remains() {
    let h = Harness::new();
    let alice = h.register("alice", 1, 1).await;
    let laptop = dev(11);
    let (_, body) = h
        .call(
            Method::PUT,
            "/v1/devices",
            Some(&alice.token),
            Some(json!({"device_list": alice.identity.list(2, &[alice.device, laptop])})),
        )
        .await;
    let laptop_token = body["new_device_token"].as_str().unwrap().to_owned();
    let (status, body) = h
        .call(
            Method::PUT,
            "/v1/devices",
            Some(&alice.token),
            Some(json!({"device_list": alice.identity.list(3, &[laptop])})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["removed"], json!([alice.device]));
    let (status, _) = h
        .call(Method::GET, "/v1/mailbox", Some(&alice.token), None)
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) = h
        .call(Method::GET, "/v1/mailbox", Some(&laptop_token), None)
        .await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn messages_fan_out_once_and_resends_are_deduplicated() {
    let h = Harness::new();
    let g = group(4);
    let (alice, bob) = h.alice_and_bob_in_group(g).await;
    // bob processes the Welcome.
    let (_, body) = h
        .call(
            Method::POST,
            "/v1/mailbox/ack",
            Some(&bob.token),
            Some(json!({"up_to": 1})),
        )
        .await;
    assert_eq!(body, json!({"deleted": 1}));

    let (status, body) = h.send_message(&alice, g, 1, 42).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body, json!({"duplicate": false}));
    assert!(
        h.mailbox(&alice).await.is_empty(),
        "the sender gets nothing"
    );
    let entries = h.mailbox(&bob).await;
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0]["kind"], "message");
    assert_eq!(entries[0]["seq"], 2);
    assert_eq!(entries[0]["body"], b64(&app_bytes(g, 1, &[42; 8])));

    // Resend with the same id: accepted as a duplicate, no second entry.
    let (status, body) = h.send_message(&alice, g, 1, 42).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body, json!({"duplicate": true}));
    assert_eq!(h.mailbox(&bob).await.len(), 1);

    // Fetch with after / limit, then ack.
    h.send_message(&alice, g, 1, 43).await;
    let (_, body) = h
        .call(
            Method::GET,
            "/v1/mailbox?after=2&limit=10",
            Some(&bob.token),
            None,
        )
        .await;
    let entries = body["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0]["seq"], 3);
    let (_, body) = h
        .call(Method::GET, "/v1/mailbox?limit=1", Some(&bob.token), None)
        .await;
    assert_eq!(body["entries"].as_array().unwrap().len(), 1);
    let (_, body) = h
        .call(
            Method::POST,
            "/v1/mailbox/ack",
            Some(&bob.token),
            Some(json!({"up_to": 3})),
        )
        .await;
    assert_eq!(body, json!({"deleted": 2}));
    assert!(h.mailbox(&bob).await.is_empty());
    assert_eq!(h.state.store().stats().await.unwrap().bodies, 0);
}

#[tokio::test]
async fn bad_input_is_always_a_json_4xx() {
    let h = Harness::new();
    let g = group(5);
    let (alice, _bob) = h.alice_and_bob_in_group(g).await;
    let t = Some(alice.token.as_str());
    let commits = format!("/v1/groups/{g}/commits");
    let messages = format!("/v1/groups/{g}/messages");

    let cases: Vec<Case<'_>> = vec![
        // Malformed JSON.
        (Method::POST, "/v1/accounts".into(), None, b"{not json".to_vec(), StatusCode::BAD_REQUEST, "bad_request"),
        (Method::POST, commits.clone(), t, b"".to_vec(), StatusCode::BAD_REQUEST, "bad_request"),
        (Method::POST, "/v1/accounts".into(), None, vec![0xff, 0xfe, 0x00], StatusCode::BAD_REQUEST, "bad_request"),
        // Wrong types.
        (Method::POST, "/v1/mailbox/ack".into(), t, br#"{"up_to":"seven"}"#.to_vec(), StatusCode::BAD_REQUEST, "bad_request"),
        (Method::POST, "/v1/mailbox/ack".into(), t, br#"{"up_to":-1}"#.to_vec(), StatusCode::BAD_REQUEST, "bad_request"),
        (Method::POST, "/v1/groups".into(), t, br#"{"group_id":12}"#.to_vec(), StatusCode::BAD_REQUEST, "bad_request"),
        (Method::POST, "/v1/accounts".into(), None, br#"[1,2,3]"#.to_vec(), StatusCode::BAD_REQUEST, "bad_request"),
        // Invalid ids.
        (Method::POST, "/v1/groups".into(), t, br#"{"group_id":"xyz"}"#.to_vec(), StatusCode::BAD_REQUEST, "bad_request"),
        (Method::POST, "/v1/accounts".into(), None, br#"{"username":"A!","device_list":"AA=="}"#.to_vec(), StatusCode::BAD_REQUEST, "bad_request"),
        (Method::GET, "/v1/groups/not-hex".into(), t, vec![], StatusCode::BAD_REQUEST, "bad_request"),
        (Method::GET, "/v1/accounts/x".into(), t, vec![], StatusCode::BAD_REQUEST, "bad_request"),
        (Method::POST, messages.clone(), t, format!(r#"{{"message_id":"not-a-uuid","body":"{}"}}"#, b64(&app_bytes(g, 1, b"x"))).into_bytes(), StatusCode::BAD_REQUEST, "bad_request"),
        (Method::GET, "/v1/mailbox?after=abc".into(), t, vec![], StatusCode::BAD_REQUEST, "bad_request"),
        // Bad base64.
        (Method::POST, commits.clone(), t, br#"{"epoch":1,"commit":"!!!not base64"}"#.to_vec(), StatusCode::BAD_REQUEST, "bad_request"),
        (Method::POST, "/v1/key-packages".into(), t, br#"{"one_time":["@@@"]}"#.to_vec(), StatusCode::BAD_REQUEST, "bad_request"),
        // Framing mismatches: wrong epoch, wrong group, not a commit, garbage.
        (Method::POST, commits.clone(), t, json!({"epoch": 1, "commit": b64(&commit_bytes(g, 5))}).to_string().into_bytes(), StatusCode::BAD_REQUEST, "bad_request"),
        (Method::POST, commits.clone(), t, json!({"epoch": 1, "commit": b64(&commit_bytes(group(99), 1))}).to_string().into_bytes(), StatusCode::BAD_REQUEST, "bad_request"),
        (Method::POST, commits.clone(), t, json!({"epoch": 1, "commit": b64(&app_bytes(g, 1, b"x"))}).to_string().into_bytes(), StatusCode::BAD_REQUEST, "bad_request"),
        (Method::POST, commits.clone(), t, json!({"epoch": 1, "commit": b64(b"random bytes")}).to_string().into_bytes(), StatusCode::BAD_REQUEST, "bad_request"),
        // Adds without a welcome, a welcome that is not one.
        (Method::POST, commits.clone(), t, json!({"epoch": 1, "added": [dev(2)], "commit": b64(&commit_bytes(g, 1))}).to_string().into_bytes(), StatusCode::BAD_REQUEST, "bad_request"),
        (Method::POST, commits.clone(), t, json!({"epoch": 1, "added": [dev(2)], "commit": b64(&commit_bytes(g, 1)), "welcome": b64(b"nope")}).to_string().into_bytes(), StatusCode::BAD_REQUEST, "bad_request"),
        (Method::POST, messages.clone(), t, json!({"message_id": message_id(1).to_string(), "body": b64(&commit_bytes(g, 1))}).to_string().into_bytes(), StatusCode::BAD_REQUEST, "bad_request"),
        (Method::POST, messages.clone(), t, json!({"message_id": message_id(1).to_string(), "body": b64(&app_bytes(group(98), 1, b"x"))}).to_string().into_bytes(), StatusCode::BAD_REQUEST, "bad_request"),
        // Unknown group.
        (Method::POST, format!("/v1/groups/{}/commits", group(97)), t, json!({"epoch": 0, "commit": b64(&commit_bytes(group(97), 0))}).to_string().into_bytes(), StatusCode::NOT_FOUND, "unknown_group"),
        (Method::POST, format!("/v1/groups/{}/messages", group(97)), t, json!({"message_id": message_id(1).to_string(), "body": b64(&app_bytes(group(97), 0, b"x"))}).to_string().into_bytes(), StatusCode::NOT_FOUND, "unknown_group"),
        // A message for an epoch the group has not reached.
        (Method::POST, messages.clone(), t, json!({"message_id": message_id(2).to_string(), "body": b64(&app_bytes(g, 9, b"x"))}).to_string().into_bytes(), StatusCode::CONFLICT, "stale_epoch"),
        // Adding a device that does not exist.
        (Method::POST, commits.clone(), t, json!({"epoch": 1, "added": [dev(77)], "commit": b64(&commit_bytes(g, 1)), "welcome": b64(&welcome_bytes())}).to_string().into_bytes(), StatusCode::NOT_FOUND, "not_found"),
        // Unknown endpoint and wrong method.
        (Method::GET, "/v1/nothing-here".into(), t, vec![], StatusCode::NOT_FOUND, "not_found"),
        (Method::DELETE, "/v1/mailbox".into(), t, vec![], StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
    ];
    for (method, uri, token, body, want, code) in cases {
        let (status, value) = h.raw(method.clone(), &uri, token, body.clone()).await;
        assert_eq!(
            (status, value["error"]["code"].as_str()),
            (want, Some(code)),
            "{method} {uri} {}: {value}",
            String::from_utf8_lossy(&body)
        );
        assert!(value["error"]["message"].is_string());
    }

    // Oversize body.
    let huge = json!({"one_time": [b64(&vec![7u8; 1_100_000])]})
        .to_string()
        .into_bytes();
    let (status, value) = h.raw(Method::POST, "/v1/key-packages", t, huge).await;
    assert_error(status, &value, StatusCode::PAYLOAD_TOO_LARGE, "too_large");

    // Nothing above changed the group.
    let (_, body) = h
        .call(Method::GET, &format!("/v1/groups/{g}"), t, None)
        .await;
    assert_eq!(body["epoch"], 1);
}

#[tokio::test]
async fn link_slots_are_single_use_and_expire() {
    let h = Harness::new();
    let slot = "00112233445566778899aabbccddeeff";
    let uri = format!("/v1/link/{slot}");
    let put = |uri: String, body: Vec<u8>| {
        Request::put(uri)
            .header(header::CONTENT_TYPE, "application/octet-stream")
            .body(Body::from(body))
            .unwrap()
    };
    let get = |uri: String| Request::get(uri).body(Body::empty()).unwrap();

    let (status, _) = h.send(put(uri.clone(), b"sealed payload".to_vec())).await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, body) = h.send(put(uri.clone(), b"another".to_vec())).await;
    assert_eq!(status, StatusCode::CONFLICT);
    let body: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(body["error"]["code"], "slot_in_use");

    let (status, body) = h.send(get(uri.clone())).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, b"sealed payload");
    let (status, body) = h.send(get(uri.clone())).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let body: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(body["error"]["code"], "not_found");

    // Expiry.
    let (status, _) = h.send(put(uri.clone(), b"late".to_vec())).await;
    assert_eq!(status, StatusCode::CREATED);
    h.clock
        .advance(ServerConfig::default().link_slot_ttl_secs + 1);
    let (status, _) = h.send(get(uri.clone())).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // Bad ids, empty and oversize payloads.
    for bad in [
        "short",
        "zz112233445566778899aabbccddeeff",
        "00112233445566778899aabbccddeeff00",
    ] {
        let (status, body) = h.send(get(format!("/v1/link/{bad}"))).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}");
        let body: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(body["error"]["code"], "bad_request");
    }
    let (status, _) = h.send(put(uri.clone(), Vec::new())).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, body) = h.send(put(uri.clone(), vec![1; 64 * 1024 + 1])).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    let body: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(body["error"]["code"], "too_large");
    let (status, _) = h.send(put(uri.clone(), vec![1; 64 * 1024])).await;
    assert_eq!(status, StatusCode::CREATED);
}

/// On tokio's paused clock: the loop runs at its production interval and the test
/// waits on virtual time, so nothing depends on how fast this machine is.
#[tokio::test(start_paused = true)]
async fn the_expiry_loop_drops_old_entries_and_stops_at_shutdown() {
    let h = Harness::new();
    let g = group(6);
    let (alice, bob) = h.alice_and_bob_in_group(g).await;
    h.send_message(&alice, g, 1, 1).await;
    let every = std::time::Duration::from_secs(60);
    let task = tokio::spawn(sotto_server::expire_loop(h.state.clone(), every));
    // Several sweeps pass before anything is old.
    tokio::time::sleep(every * 3).await;
    assert_eq!(h.mailbox(&bob).await.len(), 2, "nothing is old yet");

    h.clock.advance(ServerConfig::default().retention_secs + 1);
    // The next sweep expires everything; each turn waits one interval of virtual time.
    let mut sweeps = 0;
    while !h.mailbox(&bob).await.is_empty() {
        tokio::time::sleep(every).await;
        sweeps += 1;
        assert!(sweeps <= 3, "entries past the retention were not expired");
    }
    assert_eq!(h.state.store().stats().await.unwrap().bodies, 0);

    h.state.begin_shutdown();
    task.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_over_the_sqlite_store() {
    let h = Arc::new(Harness::sqlite());
    let g = group(9);
    let (alice, bob) = h.alice_and_bob_in_group(g).await;
    assert_eq!(h.mailbox(&bob).await[0]["kind"], "welcome");

    // Racing commits: exactly one wins.
    let alice = Arc::new(alice);
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let h = h.clone();
        let alice = alice.clone();
        tasks.push(tokio::spawn(
            async move { h.commit(&alice, g, 1, &[]).await.0 },
        ));
    }
    let mut ok = 0;
    for t in tasks {
        match t.await.unwrap() {
            StatusCode::OK => ok += 1,
            StatusCode::CONFLICT => {}
            other => panic!("unexpected {other}"),
        }
    }
    assert_eq!(ok, 1);

    // Messages fan out, resends are deduplicated, acks delete.
    let (status, body) = h.send_message(&alice, g, 2, 1).await;
    assert_eq!(
        (status, body),
        (StatusCode::ACCEPTED, json!({"duplicate": false}))
    );
    let (_, body) = h.send_message(&alice, g, 2, 1).await;
    assert_eq!(body, json!({"duplicate": true}));
    assert!(h.mailbox(&alice).await.is_empty());
    let entries = h.mailbox(&bob).await;
    let kinds: Vec<&str> = entries
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["welcome", "commit", "message"]);
    let (_, body) = h
        .call(
            Method::POST,
            "/v1/mailbox/ack",
            Some(&bob.token),
            Some(json!({"up_to": entries[2]["seq"]})),
        )
        .await;
    assert_eq!(body, json!({"deleted": 3}));
    assert!(h.mailbox(&bob).await.is_empty());

    // Removing a device kills its token at once.
    let (status, body) = h
        .call(
            Method::PUT,
            "/v1/devices",
            Some(&bob.token),
            Some(json!({"device_list": bob.identity.list(2, &[bob.device, dev(20)])})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let tablet = body["new_device_token"].as_str().unwrap().to_owned();
    let (status, _) = h
        .call(
            Method::PUT,
            "/v1/devices",
            Some(&tablet),
            Some(json!({"device_list": bob.identity.list(3, &[dev(20)])})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = h
        .call(Method::GET, "/v1/mailbox", Some(&bob.token), None)
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}
