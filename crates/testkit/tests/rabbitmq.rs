//! The RabbitMQ fixture: a broker starts, answers AMQP, survives a restart on the same port,
//! and leaves no process behind.

use rebalanser_testkit::{pid_alive, RabbitMq};

#[test]
fn broker_starts_restarts_and_stops() {
    let b = RabbitMq::start().expect("broker");
    let first = b.pid().expect("pid");
    assert!(std::net::TcpStream::connect(b.addr()).is_ok());
    b.restart().expect("restart");
    let second = b.pid().expect("pid");
    assert_ne!(first, second);
    assert!(!pid_alive(first), "the killed broker {first} still runs");
    assert!(std::net::TcpStream::connect(b.addr()).is_ok());
    drop(b);
    assert!(!pid_alive(second), "the dropped broker {second} still runs");
}
