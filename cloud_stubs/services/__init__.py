"""The stub's cloud services (Shadow, Jobs, Fleet Provisioning) as privileged MQTT clients."""
