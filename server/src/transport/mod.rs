//! The agents' side of the server: QUIC connections, their control sessions and the streams
//! on them, each a thin driver of a `ferry_lifecycle` machine.

pub(crate) mod accept;
pub(crate) mod dispatch;
pub(crate) mod enroll;
pub(crate) mod fetch;
pub(crate) mod streams;
