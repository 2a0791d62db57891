"""The device the WebUI runs its models on (``devices.device``)."""

device = "cpu"
