"""The spine: one Flower strategy that runs rounds and knows no unlearning method.

``clients`` (who is who, who may train), ``replies`` (validation), ``intake``
(requests into steps), ``records`` (what each round and step did),
``strategy`` (the FedAvg subclass) and ``federation`` (a run from a config).
"""
