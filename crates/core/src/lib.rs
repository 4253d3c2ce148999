//! Sotto's end-to-end encryption engine on OpenMLS. It does no I/O: storage,
//! crypto and randomness come in through providers.

pub mod storage;
