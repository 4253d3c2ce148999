//! Extractors whose rejections are [`ApiError`]s, so axum's plain-text rejections never
//! reach a client, and the bearer-token authentication.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};
use sotto_proto::{DeviceId, Username};

use crate::AppState;
use crate::error::ApiError;

/// A JSON body. Any body problem is a 400 `bad_request` (413 `too_large` past the limit).
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = body_bytes(req, state).await?;
        // Every body is an object; serde would also take a struct from an array.
        if bytes.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
            return Err(ApiError::bad_request("the body must be a JSON object"));
        }
        serde_json::from_slice(&bytes)
            .map(ApiJson)
            .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))
    }
}

/// The raw body, within the route's body limit.
pub async fn body_bytes<S: Send + Sync>(req: Request, state: &S) -> Result<Bytes, ApiError> {
    Bytes::from_request(req, state).await.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::TooLarge
        } else {
            ApiError::bad_request("could not read the request body")
        }
    })
}

/// Path parameters, parsed into validated types (400 when they do not parse).
pub struct ApiPath<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for ApiPath<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        Path::<T>::from_request_parts(parts, state)
            .await
            .map(|Path(v)| ApiPath(v))
            .map_err(|e| ApiError::bad_request(e.body_text()))
    }
}

/// Query parameters (400 when they do not parse).
pub struct ApiQuery<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        Query::<T>::from_request_parts(parts, state)
            .await
            .map(|Query(v)| ApiQuery(v))
            .map_err(|e| ApiError::bad_request(e.body_text()))
    }
}

/// The authenticated caller: the account and the device whose token was presented.
#[derive(Debug, Clone)]
pub struct Authed {
    /// The account.
    pub username: Username,
    /// The device.
    pub device: DeviceId,
}

impl FromRequestParts<AppState> for Authed {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let token = bearer_token(&parts.headers).ok_or(ApiError::Unauthorized)?;
        authenticate(state, token).await
    }
}

/// The token of an `Authorization: Bearer <token>` header, if there is one.
pub fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    let value = headers
        .get(axum::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then_some(token.trim())
}

/// Resolves a presented token to its device; any failure is 401.
pub async fn authenticate(state: &AppState, token: &str) -> Result<Authed, ApiError> {
    let hash = token_hash(token).ok_or(ApiError::Unauthorized)?;
    match state
        .store()
        .device_by_token(&hash, state.clock().now())
        .await?
    {
        Some((username, device)) => Ok(Authed { username, device }),
        None => Err(ApiError::Unauthorized),
    }
}

/// SHA-256 of a well-formed token (32 bytes, base64url without padding).
fn token_hash(token: &str) -> Option<[u8; 32]> {
    let raw = URL_SAFE_NO_PAD.decode(token).ok()?;
    if raw.len() != 32 {
        return None;
    }
    Some(Sha256::digest(&raw).into())
}

/// A fresh device token (32 random bytes, base64url without padding) and the hash the
/// store keeps.
pub fn new_token() -> Result<(String, [u8; 32]), ApiError> {
    let mut raw = [0u8; 32];
    getrandom::fill(&mut raw)
        .map_err(|e| ApiError::Internal(format!("the system RNG failed: {e}")))?;
    let hash: [u8; 32] = Sha256::digest(raw).into();
    Ok((URL_SAFE_NO_PAD.encode(raw), hash))
}
