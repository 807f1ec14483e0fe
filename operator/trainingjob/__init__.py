"""The TrainingJob controller. Importing the package registers its kopf handlers."""

from modelfleet_operator.trainingjob import handlers  # noqa: F401  (imported for registration)
