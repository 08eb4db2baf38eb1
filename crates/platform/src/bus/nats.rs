//! NATS JetStream bus. (Being written.)
