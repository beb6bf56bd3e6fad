//! The behaviour suite every backend runs. A backend's test file declares
//! `mod conformance;` and calls `conformance::suite!(make_broker)` with an async fn returning
//! a [`polybus::SharedBroker`]; each scenario becomes its own test. A scenario that needs a
//! capability the backend does not declare returns early, saying so.

#![allow(dead_code)]

#[path = "../common/mod.rs"]
pub mod common;
pub mod scenarios;
pub mod support;

/// Expands to one `#[tokio::test]` per scenario, each on a broker from `$make().await`.
macro_rules! suite {
    ($make:path) => {
        $crate::conformance::suite!(@tests $make;
            round_trip_preserves_id_key_headers_payload,
            a_blocking_publish_round_trips,
            publish_batch_delivers_every_message_in_order,
            batches_started_back_to_back_stay_in_order,
            invalid_messages_are_refused_with_a_clear_error,
            invalid_subscriptions_are_refused_with_a_clear_error,
            group_members_share_the_work,
            every_group_receives_every_message,
            nack_redelivers_with_attempt_incremented,
            nack_with_delay_waits_before_redelivery,
            reject_does_not_redeliver,
            unsettled_delivery_comes_back_after_the_subscription_closes,
            settlements_in_any_order_each_take_effect,
            failing_handler_does_not_ack,
            exhausted_retries_go_to_the_dead_letter_topic,
            a_permanent_failure_skips_the_retries,
            order_per_key_is_kept_under_concurrency,
            stop_drains_in_flight_work_and_loses_nothing,
            stop_after_drain_timeout_gives_unfinished_work_back,
            ten_thousand_messages_are_consumed_exactly_once,
            replay_from_an_offset,
            replay_from_a_timestamp,
        );
    };
    (@tests $make:path; $($scenario:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $scenario() {
                $crate::conformance::support::init_tracing();
                let broker = $make().await;
                $crate::conformance::scenarios::$scenario(broker).await;
            }
        )*
    };
}

pub(crate) use suite;
