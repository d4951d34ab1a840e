"""What connector authors build on: the read loop and its guards (:mod:`ferryman.sdk.readloop`)."""
