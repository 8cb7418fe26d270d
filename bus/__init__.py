"""The bus: subjects, partitions, envelopes and JetStream provisioning (issue 3)."""
