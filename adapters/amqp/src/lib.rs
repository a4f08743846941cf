//! quartet-amqp
