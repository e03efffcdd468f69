//! `rabbitmq::answers` tells an AMQP server from a closed port (the machine's RabbitMQ runs on
//! 127.0.0.1:5672: `cargo xtask test` makes sure of it).

#[test]
fn the_shared_rabbitmq_answers_amqp_and_a_closed_port_does_not() {
    assert!(
        nexus_toolenv::rabbitmq::answers(nexus_toolenv::rabbitmq::PORT),
        "no AMQP on 127.0.0.1:5672"
    );
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(1);
    assert!(!nexus_toolenv::rabbitmq::answers(closed));
}
