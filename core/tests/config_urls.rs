//! Broker URLs and environment variables: what parses, what fails, and that no password leaks.

use std::collections::HashMap;

use polybus::config::{
    BrokerConfig, BrokerKind, MessagingSettings, RedisMode, broker_config_for, messaging_settings,
};

fn parse(url: &str) -> BrokerConfig {
    BrokerConfig::parse(url).unwrap_or_else(|err| panic!("{url}: {err}"))
}

fn error(url: &str) -> String {
    let err = BrokerConfig::parse(url).expect_err(url).to_string();
    assert!(!err.contains("s3cr3t"), "password leaked: {err}");
    err
}

fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
    let map: HashMap<String, String> = pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    move |name| map.get(name).cloned()
}

#[test]
fn memory_and_null_urls() {
    let BrokerConfig::Memory(memory) = parse("memory://") else {
        panic!()
    };
    assert_eq!((memory.name.as_str(), memory.capacity), ("", 100_000));
    let BrokerConfig::Memory(memory) = parse("memory://orders?capacity=10") else {
        panic!()
    };
    assert_eq!((memory.name.as_str(), memory.capacity), ("orders", 10));
    assert_eq!(parse("null://"), BrokerConfig::Null);
}

#[test]
fn kafka_urls_take_several_hosts_and_pass_properties_through() {
    let BrokerConfig::Kafka(kafka) = parse(
        "kafka://k1:9092,k2:9093,k3?client_id=svc&group_id=billing&acks=all&compression.type=zstd",
    ) else {
        panic!()
    };
    assert_eq!(kafka.bootstrap_servers, ["k1:9092", "k2:9093", "k3:9092"]);
    assert_eq!(kafka.client_id.as_deref(), Some("svc"));
    assert_eq!(kafka.group_id.as_deref(), Some("billing"));
    assert_eq!(
        kafka.properties.get("acks").map(String::as_str),
        Some("all")
    );
    assert_eq!(
        kafka.properties.get("compression.type").map(String::as_str),
        Some("zstd")
    );
    assert!(!kafka.tls);

    let BrokerConfig::Kafka(kafka) =
        parse("kafka+ssl://user:s3cr3t@[::1]:9094?sasl.mechanism=SCRAM-SHA-512")
    else {
        panic!()
    };
    assert!(kafka.tls);
    assert_eq!(kafka.bootstrap_servers, ["[::1]:9094"]);
    assert_eq!(kafka.username.as_deref(), Some("user"));
    assert_eq!(kafka.password.as_ref().unwrap().expose(), "s3cr3t");
}

#[test]
fn amqp_urls() {
    let BrokerConfig::RabbitMq(amqp) = parse("amqp://app:s3cr3t@rabbit:5673/orders?heartbeat=30")
    else {
        panic!()
    };
    assert_eq!(
        (amqp.host.as_str(), amqp.port, amqp.vhost.as_str()),
        ("rabbit", 5673, "orders")
    );
    assert_eq!(
        (amqp.username.as_str(), amqp.password.expose()),
        ("app", "s3cr3t")
    );
    assert_eq!(amqp.params.get("heartbeat").map(String::as_str), Some("30"));

    let BrokerConfig::RabbitMq(amqp) = parse("amqp://guest:guest@localhost:5672/") else {
        panic!()
    };
    assert_eq!(amqp.vhost, "/", "a trailing slash means the default vhost");
    let BrokerConfig::RabbitMq(amqp) = parse("amqps://h/%2Fprod") else {
        panic!()
    };
    assert_eq!(
        (amqp.tls, amqp.port, amqp.vhost.as_str()),
        (true, 5671, "/prod")
    );
    assert_eq!(
        (amqp.username.as_str(), amqp.password.expose()),
        ("guest", "guest")
    );
}

#[test]
fn redis_urls_choose_a_mode() {
    let BrokerConfig::Redis(redis) = parse("redis://localhost:6379/0") else {
        panic!()
    };
    assert_eq!((redis.mode, redis.db), (RedisMode::List, 0));
    let BrokerConfig::Redis(redis) = parse("redis://:s3cr3t@cache:6380/2?mode=streams&maxlen=1000")
    else {
        panic!()
    };
    assert_eq!(
        (redis.host.as_str(), redis.port, redis.db, redis.mode),
        ("cache", 6380, 2, RedisMode::Streams)
    );
    assert_eq!(redis.password.as_ref().unwrap().expose(), "s3cr3t");
    assert_eq!(redis.username, None);
    let BrokerConfig::Redis(redis) = parse("rediss://cache?mode=pubsub") else {
        panic!()
    };
    assert!(redis.tls);
    assert_eq!(redis.mode, RedisMode::PubSub);
}

#[test]
fn bad_urls_name_the_bad_part() {
    let cases = [
        ("", "url"),
        ("localhost:9092", "scheme"),
        ("mqtt://broker", "unknown scheme \"mqtt\""),
        ("kafka://", "host"),
        ("kafka://k1:9092,,k2", "empty host"),
        ("kafka://k1:notaport", "port of \"k1:notaport\""),
        ("kafka://k1:0", "must not be 0"),
        ("kafka://k1?acks", "`acks`"),
        ("amqp://user:s3cr3t@host:99999/", "url"),
        ("amqp://user:s3cr3t@host/a/b", "vhost"),
        ("amqp://user:s3cr3t@host/?hartbeat=5", "`hartbeat`"),
        ("redis://:s3cr3t@host/notanumber", "database"),
        ("redis://host?mode=queueish", "mode"),
        ("redis://host?mode=list&mode=streams", "more than once"),
        ("memory://?capacity=0", "capacity"),
        ("memory://?capacity=lots", "capacity"),
        ("null://?x=1", "`x`"),
    ];
    for (url, expected) in cases {
        let err = error(url);
        assert!(
            err.contains(expected),
            "{url:?} gave {err:?}, which does not mention {expected:?}"
        );
    }
}

#[test]
fn passwords_never_appear_in_debug_or_display() {
    for url in [
        "amqp://app:s3cr3t@rabbit:5672/",
        "redis://user:s3cr3t@cache:6379/0",
        "kafka://user:s3cr3t@k1:9092",
    ] {
        let config = parse(url);
        let shown = format!("{config:?} {config} {}", config.redacted_url());
        assert!(!shown.contains("s3cr3t"), "{shown}");
        assert!(shown.contains("***"), "{shown}");
        assert!(config.url_with_credentials().contains("s3cr3t"));
        assert_eq!(
            parse(&config.url_with_credentials()),
            config,
            "URL round trip of {url}"
        );
    }
}

#[test]
fn environment_picks_the_configured_broker() {
    let settings = messaging_settings(env(&[])).unwrap();
    assert_eq!(settings.broker.kind(), BrokerKind::Memory);
    assert!(settings.enabled && !settings.fallback_in_memory);

    let settings = messaging_settings(env(&[
        ("KAFKA_BROKERS", "k1:9092,k2:9092"),
        ("KAFKA_CLIENT_ID", "helix"),
        ("KAFKA_GROUP_ID", "helix-group"),
        ("MESSAGING_FALLBACK_INMEMORY", "true"),
    ]))
    .unwrap();
    let BrokerConfig::Kafka(kafka) = &settings.broker else {
        panic!()
    };
    assert_eq!(kafka.bootstrap_servers, ["k1:9092", "k2:9092"]);
    assert_eq!(kafka.client_id.as_deref(), Some("helix"));
    assert_eq!(kafka.group_id.as_deref(), Some("helix-group"));
    assert!(settings.fallback_in_memory);

    let settings = messaging_settings(env(&[
        ("RABBITMQ_HOST", "mq"),
        ("RABBITMQ_PORT", "5673"),
        ("RABBITMQ_USER", "helix"),
        ("RABBITMQ_PASSWORD", "s3cr3t"),
        ("RABBITMQ_VHOST", "jobs"),
    ]))
    .unwrap();
    let BrokerConfig::RabbitMq(amqp) = &settings.broker else {
        panic!()
    };
    assert_eq!(
        (amqp.host.as_str(), amqp.port, amqp.vhost.as_str()),
        ("mq", 5673, "jobs")
    );
    assert!(!format!("{settings:?}").contains("s3cr3t"));

    let settings = messaging_settings(env(&[("REDIS_URL", "redis://cache:6379/1")])).unwrap();
    assert_eq!(settings.broker.kind(), BrokerKind::Redis);

    let settings = messaging_settings(env(&[
        ("POLYBUS_URL", "redis://cache?mode=streams"),
        ("KAFKA_BROKERS", "k1:9092"),
    ]))
    .unwrap();
    assert_eq!(
        settings.broker.kind(),
        BrokerKind::Redis,
        "POLYBUS_URL wins"
    );

    let settings = messaging_settings(env(&[
        ("MESSAGING_ENABLED", "false"),
        ("REDIS_URL", "redis://x"),
    ]))
    .unwrap();
    assert_eq!(settings.broker, BrokerConfig::Null);
    assert!(!settings.enabled);
}

#[test]
fn environment_errors_name_the_variable() {
    let err = messaging_settings(env(&[("KAFKA_BROKERS", "k1"), ("REDIS_URL", "redis://x")]))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("KAFKA_BROKERS") && err.contains("REDIS_URL") && err.contains("POLYBUS_URL"),
        "{err}"
    );

    let err = messaging_settings(env(&[("MESSAGING_ENABLED", "maybe")]))
        .unwrap_err()
        .to_string();
    assert!(err.contains("MESSAGING_ENABLED"), "{err}");

    let err = messaging_settings(env(&[("RABBITMQ_URL", "amqp://u:s3cr3t@h:bad/")]))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("RABBITMQ_URL") && !err.contains("s3cr3t"),
        "{err}"
    );

    let err = messaging_settings(env(&[("REDIS_URL", "amqp://h")]))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("REDIS_URL") && err.contains("rabbitmq"),
        "{err}"
    );

    let err = messaging_settings(env(&[("RABBITMQ_HOST", "h"), ("RABBITMQ_PORT", "x")]))
        .unwrap_err()
        .to_string();
    assert!(err.contains("RABBITMQ_PORT"), "{err}");
}

#[test]
fn one_broker_kind_from_its_variables_with_local_defaults() {
    let kafka = broker_config_for(BrokerKind::Kafka, env(&[])).unwrap();
    assert_eq!(kafka.redacted_url(), "kafka://localhost:9092");
    let kafka = broker_config_for(
        BrokerKind::Kafka,
        env(&[("KAFKA_BOOTSTRAP_SERVERS", "a:1,b:2")]),
    )
    .unwrap();
    assert_eq!(kafka.redacted_url(), "kafka://a:1,b:2");
    let amqp = broker_config_for(BrokerKind::RabbitMq, env(&[])).unwrap();
    assert_eq!(amqp.redacted_url(), "amqp://guest:***@localhost:5672/%2F");
    let redis = broker_config_for(BrokerKind::Redis, env(&[])).unwrap();
    assert_eq!(redis.redacted_url(), "redis://localhost:6379/0?mode=list");
    assert!(
        "kafak"
            .parse::<BrokerKind>()
            .unwrap_err()
            .to_string()
            .contains("kafak")
    );
    let _: MessagingSettings =
        MessagingSettings::from_process_env().unwrap_or_else(|err| panic!("{err}"));
}

#[test]
fn bindings_resolve_a_kind_url_servers_and_options() {
    use polybus::config::resolve_config;
    let kafka = resolve_config(
        Some(BrokerKind::Kafka),
        None,
        Some("k1:9092,k2"),
        [("acks", "all")],
        env(&[]),
    )
    .unwrap();
    assert_eq!(kafka.redacted_url(), "kafka://k1:9092,k2:9092?acks=all");
    let redis = resolve_config(
        None,
        Some("redis://cache/1"),
        None,
        [("mode", "streams")],
        env(&[]),
    )
    .unwrap();
    let BrokerConfig::Redis(redis) = redis else {
        panic!()
    };
    assert_eq!((redis.db, redis.mode), (1, RedisMode::Streams));
    let from_env = resolve_config(
        None,
        None,
        None,
        [],
        env(&[("RABBITMQ_URL", "amqp://u:p@mq/")]),
    )
    .unwrap();
    assert_eq!(from_env.kind(), BrokerKind::RabbitMq);
    let err = resolve_config(Some(BrokerKind::Redis), None, Some("k:1"), [], env(&[])).unwrap_err();
    assert!(err.to_string().contains("bootstrap_servers"), "{err}");
    let err = resolve_config(
        Some(BrokerKind::Memory),
        None,
        None,
        [("nope", "1")],
        env(&[]),
    )
    .unwrap_err();
    assert!(err.to_string().contains("`nope`"), "{err}");
}

#[test]
fn start_positions_and_dead_letters_parse_as_the_bindings_pass_them() {
    use polybus::{DeadLetter, StartPosition};
    assert_eq!(
        "Latest".parse::<StartPosition>().unwrap(),
        StartPosition::Latest
    );
    assert_eq!(
        "offset:42".parse::<StartPosition>().unwrap(),
        StartPosition::Offset(42)
    );
    assert_eq!(
        "timestamp:1700000000000".parse::<StartPosition>().unwrap(),
        StartPosition::Timestamp(1_700_000_000_000)
    );
    let err = "offset:x".parse::<StartPosition>().unwrap_err().to_string();
    assert!(err.contains("start") && err.contains("offset:x"), "{err}");
    assert_eq!("reject".parse::<DeadLetter>().unwrap(), DeadLetter::Reject);
    assert_eq!(
        ".failed".parse::<DeadLetter>().unwrap(),
        DeadLetter::Suffix(".failed".into())
    );
    assert_eq!(
        "errors".parse::<DeadLetter>().unwrap(),
        DeadLetter::Topic("errors".into())
    );
    assert!(
        "".parse::<DeadLetter>()
            .unwrap_err()
            .to_string()
            .contains("dead_letter")
    );
}
