//! `/openapi.json`: a valid OpenAPI 3 document that covers every endpoint the router
//! serves, with its error answers, and whose schemas match what the server accepts.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use common::harness::Harness;
use serde_json::Value;

/// Every endpoint of docs/protocol.md, with a path that exercises it.
const ENDPOINTS: &[(&str, &str, &str)] = &[
    ("get", "/healthz", "/healthz"),
    ("get", "/metrics", "/metrics"),
    ("post", "/v1/accounts", "/v1/accounts"),
    ("get", "/v1/accounts/{username}", "/v1/accounts/alice"),
    (
        "post",
        "/v1/accounts/{username}/recovery-lookup",
        "/v1/accounts/alice/recovery-lookup",
    ),
    (
        "post",
        "/v1/accounts/{username}/recover",
        "/v1/accounts/alice/recover",
    ),
    ("put", "/v1/devices", "/v1/devices"),
    ("post", "/v1/devices/token", "/v1/devices/token"),
    ("post", "/v1/key-packages", "/v1/key-packages"),
    ("get", "/v1/key-packages", "/v1/key-packages"),
    ("post", "/v1/key-packages/claim", "/v1/key-packages/claim"),
    ("post", "/v1/groups", "/v1/groups"),
    (
        "get",
        "/v1/groups/{id}",
        "/v1/groups/00000000000000000000000000000000",
    ),
    (
        "post",
        "/v1/groups/{id}/commits",
        "/v1/groups/00000000000000000000000000000000/commits",
    ),
    (
        "post",
        "/v1/groups/{id}/messages",
        "/v1/groups/00000000000000000000000000000000/messages",
    ),
    ("get", "/v1/mailbox", "/v1/mailbox"),
    ("post", "/v1/mailbox/ack", "/v1/mailbox/ack"),
    (
        "put",
        "/v1/link/{slot}",
        "/v1/link/00000000000000000000000000000000",
    ),
    (
        "get",
        "/v1/link/{slot}",
        "/v1/link/00000000000000000000000000000000",
    ),
    ("post", "/v1/attachments", "/v1/attachments"),
    (
        "get",
        "/v1/attachments/{id}",
        "/v1/attachments/00000000000000000000000000000000",
    ),
    ("get", "/v1/ws", "/v1/ws"),
];

async fn document(h: &Harness) -> Value {
    let (status, bytes) = h
        .send(Request::get("/openapi.json").body(Body::empty()).unwrap())
        .await;
    assert_eq!(status, StatusCode::OK);
    serde_json::from_slice(&bytes).unwrap()
}

#[tokio::test]
async fn the_document_is_openapi_3_and_lists_every_endpoint_with_its_errors() {
    let h = Harness::new();
    let doc = document(&h).await;
    assert!(
        doc["openapi"].as_str().unwrap().starts_with("3."),
        "{}",
        doc["openapi"]
    );
    assert!(doc["components"]["securitySchemes"]["bearer"].is_object());
    let paths = doc["paths"].as_object().unwrap();

    let mut documented = 0;
    for (path, ops) in paths {
        for (method, op) in ops.as_object().unwrap() {
            documented += 1;
            assert!(
                ENDPOINTS.iter().any(|(m, p, _)| m == method && p == path),
                "{method} {path} is documented but not in docs/protocol.md's list"
            );
            let responses = op["responses"].as_object().unwrap();
            assert!(!responses.is_empty(), "{method} {path} has no responses");
            // Everything but health and metrics can fail with a JSON error body.
            if !["/healthz", "/metrics"].contains(&path.as_str()) {
                let error = responses
                    .iter()
                    .find(|(code, _)| code.starts_with('4'))
                    .unwrap_or_else(|| panic!("{method} {path} documents no 4xx"));
                assert_eq!(
                    error.1["content"]["application/json"]["schema"]["$ref"],
                    "#/components/schemas/ErrorBody",
                    "{method} {path}"
                );
            }
        }
    }
    assert_eq!(
        documented,
        ENDPOINTS.len(),
        "every endpoint is documented exactly once"
    );

    // Every $ref points at a schema that exists.
    let text = doc.to_string();
    for piece in text.split("\"$ref\":\"#/components/schemas/").skip(1) {
        let name = piece.split('"').next().unwrap();
        assert!(
            doc["components"]["schemas"][name].is_object(),
            "dangling $ref {name}"
        );
    }
}

#[tokio::test]
async fn every_documented_endpoint_is_actually_routed() {
    let h = Harness::new();
    for (method, _, example) in ENDPOINTS {
        let method = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
        let (status, bytes) = h
            .send(
                Request::builder()
                    .method(method.clone())
                    .uri(*example)
                    .body(Body::empty())
                    .unwrap(),
            )
            .await;
        let body = String::from_utf8_lossy(&bytes);
        assert!(
            status != StatusCode::METHOD_NOT_ALLOWED && !body.contains("no such endpoint"),
            "{method} {example} is documented but not routed ({status}: {body})"
        );
    }
    // And something undocumented is not.
    let (status, _) = h
        .send(
            Request::get("/v1/secret-admin")
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn request_schemas_name_the_fields_the_server_reads() {
    let h = Harness::new();
    let doc = document(&h).await;
    let schema = |name: &str| doc["components"]["schemas"][name].clone();
    let props = |name: &str| -> Vec<String> {
        let mut v: Vec<String> = schema(name)["properties"]
            .as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect();
        v.sort();
        v
    };
    assert_eq!(props("RegisterRequest"), ["device_list", "username"]);
    assert_eq!(
        props("CommitRequest"),
        ["added", "commit", "epoch", "removed", "welcome"]
    );
    assert_eq!(props("MessageRequest"), ["body", "message_id"]);
    assert_eq!(props("AckRequest"), ["up_to"]);
    let required = |name: &str| schema(name)["required"].clone();
    assert_eq!(
        required("MessageRequest"),
        serde_json::json!(["message_id", "body"])
    );
    // A body built from the schema's field names is accepted by the real handler.
    let alice = h.register("alice", 1, 1).await;
    let (status, body) = h
        .call(
            Method::POST,
            "/v1/mailbox/ack",
            Some(&alice.token),
            Some(serde_json::json!({"up_to": 0})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

#[tokio::test]
async fn the_endpoints_are_the_contract_crates() {
    // The list above (docs/protocol.md's) is exactly sotto-api's, but for the document
    // itself.
    let mut contract: Vec<(String, String)> = sotto_api::paths::ALL
        .iter()
        .filter(|e| **e != sotto_api::paths::OPENAPI)
        .map(|e| (e.method.as_str().to_lowercase(), e.template.to_owned()))
        .collect();
    let mut listed: Vec<(String, String)> = ENDPOINTS
        .iter()
        .map(|(m, p, _)| ((*m).to_owned(), (*p).to_owned()))
        .collect();
    contract.sort();
    listed.sort();
    assert_eq!(contract, listed);
}

#[tokio::test]
async fn every_body_taking_operation_documents_too_large_and_ids_have_patterns() {
    let h = Harness::new();
    let doc = document(&h).await;
    for (path, ops) in doc["paths"].as_object().unwrap() {
        for (method, op) in ops.as_object().unwrap() {
            if op.get("requestBody").is_some() {
                assert!(
                    op["responses"]["413"].is_object(),
                    "{method} {path} takes a body but does not document 413"
                );
            }
        }
    }
    let schema = |name: &str, field: &str| {
        doc["components"]["schemas"][name]["properties"][field]["pattern"]
            .as_str()
            .unwrap_or_else(|| panic!("{name}.{field} has no pattern"))
            .to_owned()
    };
    assert_eq!(
        schema("RegisterRequest", "username"),
        sotto_api::USERNAME_PATTERN
    );
    assert_eq!(
        schema("CreateGroupRequest", "group_id"),
        sotto_api::ID_PATTERN
    );
    assert_eq!(
        schema("MessageRequest", "message_id"),
        sotto_api::MESSAGE_ID_PATTERN
    );
}

/// Fuzzing showed `POST /v1/groups` with `["<id>"]` created a group: serde reads a
/// struct from an array too. Every JSON body must be an object.
#[tokio::test]
async fn a_body_that_is_not_an_object_is_refused() {
    let h = Harness::new();
    let alice = h.register("alice", 1, 1).await;
    let id = "00112233445566778899aabbccddeeff";
    let (status, body) = h
        .call(
            Method::POST,
            "/v1/groups",
            Some(&alice.token),
            Some(serde_json::json!([id])),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["error"]["code"], "bad_request");
    let (status, _) = h
        .call(
            Method::GET,
            &format!("/v1/groups/{id}"),
            Some(&alice.token),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "no group was created");
}
