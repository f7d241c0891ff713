"""Fleet Provisioning by claim: certificates from the claim, RegisterThing with templates."""
