//! Integration tests of the stand-in brokers: real processes started by
//! their scripts, real ports, real log dirs, and real clients
//! (`kafka-protocol` codecs and librdkafka).

mod common;
mod isr;
mod librdkafka;
mod lifecycle;
mod protocol;
mod sasl;
