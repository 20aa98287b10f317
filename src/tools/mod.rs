//! Tools around the device pipeline: the demo ([`demo`]), evaluation ([`eval`]), timings
//! ([`bench`](mod@bench)), a model's cost ([`info`](mod@info)), the replay of a model's test vectors ([`verify`](mod@verify)) and the
//! in-process MQTT broker they and the tests use ([`broker`]).

pub mod bench;
pub mod broker;
pub mod demo;
pub mod eval;
pub mod fsd;
pub mod info;
pub mod verify;
