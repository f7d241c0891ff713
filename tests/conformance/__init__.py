"""Conformance of the local IoT Core with AWS IoT Core, checked with AWS's own device clients.

Every test runs on both broker backends through the ``cloud`` fixture (mosquitto: the
awsiotsdk V2 clients over MQTT 5; embedded: over MQTT 3.1.1), except the MQTT 5-only checks,
which pin ``cloud_mosquitto``. The awsiotsdk classes (``IotShadowClientV2``,
``IotIdentityClientV2``, ``IotJobsClientV2``) are used unchanged; raw MQTT (aiomqtt, or awscrt
for MQTT 5 reason codes) is used only where the SDK cannot express a check. Protocol reference:
``shared/docs/iot_core_protocol.md``.

Point of §7 -> tests (module::test):

1. clientToken echoed on accepted and rejected, omitted when absent:
   test_shadow_wire::test_p1_client_token_echoed_everywhere_and_omitted_when_absent,
   test_jobs_wire::test_p1_p3_p4_jobs_wire_bodies (and implicitly every V2 call, which
   times out without the echo).
2. ``+`` filters on ``$aws/...``, one copy per connection:
   test_shadow_wire::test_p2_plus_filters_and_one_copy_per_connection_v311,
   test_shadow_wire::test_p2_plus_filters_and_one_copy_per_connection_mqtt5.
3. Epoch seconds in shadow/jobs, milliseconds in lifecycle events:
   test_shadow_wire::test_p3_shadow_timestamps_are_epoch_seconds,
   test_shadow_wire::test_p3_lifecycle_events_use_milliseconds,
   test_jobs_wire::test_p1_p3_p4_jobs_wire_bodies.
4. Error shapes (shadow numeric code, jobs string code, provisioning
   statusCode/errorCode/errorMessage):
   test_shadow_sdk::test_p4_bad_updates_the_sdk_can_send,
   test_shadow_wire::test_p4_rejected_update_bodies,
   test_jobs_sdk::test_p4_jobs_rejections_carry_string_codes,
   test_identity_sdk::test_p4_provision_from_csr_then_use_the_shadow,
   test_identity_sdk::test_p4_provision_with_service_made_keys,
   test_identity_sdk::test_p4_bad_ownership_tokens_are_rejected,
   test_identity_sdk::test_p4_csr_with_a_bad_signature_is_rejected,
   test_identity_sdk::test_p4_pre_provisioning_hooks.
5. 404 text, no timestamp: test_shadow_sdk::test_p5_get_on_fresh_shadow_is_404.
6. Versions (equal-version locking, no-op bump, delete N then N+2):
   test_shadow_sdk::test_p6_versions_conflict_noop_and_delete.
7. update/accepted echo, get/accepted full document, documents with previous null:
   test_shadow_sdk::test_p7_worked_sequence_with_streams (spec §2.12 step by step),
   test_shadow_sdk::test_p7_section_null_and_state_null,
   test_shadow_wire::test_p7_exact_accepted_get_and_documents_shapes.
8. Delta rules: test_shadow_sdk::test_p8_delta_rules.
9. Per-leaf metadata timestamps:
   test_shadow_sdk::test_p9_per_leaf_metadata_survives_unrelated_updates.
10. Shadows of things not in the registry:
    test_shadow_wire::test_p10_shadows_of_things_not_in_the_registry.
11. Pending lists always present, nothing-pending shapes:
    test_jobs_sdk::test_p11_nothing_pending,
    test_jobs_sdk::test_p11_pending_lists_order_and_head_changes.
12. notify / notify-next rules, jobDocument an object:
    test_jobs_sdk::test_p12_sdk_service_test_sequence (spec §3.4),
    test_jobs_sdk::test_p12_describe_next_and_by_id,
    test_jobs_sdk::test_p12_starting_a_non_head_job_makes_it_the_head.
13. Jobs update responses only to the requester (once, even without a subscription):
    test_jobs_wire::test_p13_response_reaches_a_requester_without_subscription,
    test_jobs_wire::test_p13_update_responses_are_not_fanned_out,
    test_jobs_wire::test_p13_requester_gets_exactly_one_response.
14. QoS <= 1, ``a/#`` vs ``a``, retained for exact filters, limits:
    test_broker_points::test_p14_hash_does_not_match_the_parent_level,
    test_broker_points::test_p14_qos_is_at_most_one,
    test_broker_points::test_p14_retained_messages_only_for_exact_filters,
    test_broker_points::test_p14_payload_limit_is_128_kb,
    test_broker_points::test_p14_topic_length_and_depth_limits,
    test_broker_points::test_p14_at_most_8_filters_per_subscribe,
    test_broker_points::test_p14_at_most_50_subscriptions_per_connection.
15. Duplicate client id:
    test_broker_points::test_p15_duplicate_client_id_kicks_the_old_connection,
    test_broker_points::test_p15_mqtt5_old_connection_gets_disconnect_0x8e.
16. Policies (literal ``+``/``#``, spanning ``*``, 3.1.1 hang-up vs MQTT 5 reason codes, claim
    certificates): test_broker_points::test_p16_v311_policy_literal_wildcards_and_spanning_star,
    test_broker_points::test_p16_v311_connect_with_foreign_client_id_is_refused,
    test_broker_points::test_p16_v311_refused_connect_gets_no_connack,
    test_broker_points::test_p16_mqtt5_reason_codes,
    test_broker_points::test_p16_sdk_stream_on_a_foreign_thing_halts,
    test_broker_points::test_p16_claim_identity_is_limited_to_provisioning_topics.

Tests marked ``xfail(strict=True)`` document a known stub bug or a documented deviation; the
reason names it.
"""
