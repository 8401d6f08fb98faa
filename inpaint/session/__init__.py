"""One session's job, from the delivered event to its recorded outcome.

Rooms: ``events`` (CloudEvent -> ``JobRequest``: Pub/Sub binary/structured/push, Firestore),
``document`` (the session document: every field, who writes it and when, every write),
``claims`` (the claim rules, a pure state machine over a ``Delivery``), ``cas`` (compare-and-set
writes), ``store`` (the session store: claim, inputs, lease writes, the outputs' protocol, over
two narrow backends) and ``firebase`` (those backends on Firestore and Cloud Storage),
``gpuqueue`` (the instance's one GPU: admission, fair order, the turn, hung-call detection),
``heartbeat`` (lease renewal, progress, queue position: the running job's stop signal) and
``jobs`` (the job as numbered steps, and how each way it ends is answered).
"""
