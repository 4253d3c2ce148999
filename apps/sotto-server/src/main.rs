//! The Sotto server binary. The delivery service itself is not built yet: it arrives
//! with the server issue (crates/server). Until then this says so and exits non-zero.

fn main() -> std::process::ExitCode {
    eprintln!(
        "sotto-server: not yet built. The delivery service arrives with the server issue; \
         the encryption engine (crates/core) and its tests are available now: \
         cargo nextest run --workspace"
    );
    std::process::ExitCode::FAILURE
}
