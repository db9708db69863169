"""Typed run configuration: one YAML file plus dotted ``key=value`` overrides -> a checked :class:`Config`.

- :mod:`rayseg.config.fields`: :class:`ConfigError`, ``setting`` (a key's default, doc and rules) and the
  ``Section`` base that checks them;
- :mod:`rayseg.config.sections`: the schema, one dataclass per YAML section;
- :mod:`rayseg.config.loader`: YAML + overrides -> ``Config``, URI and input checks, ``--explain``.

Every command checks its whole config before any Ray work starts: an unknown key, a value of the wrong type,
outside its choices or bounds, or a missing input raises a ConfigError whose message is one line naming the key
or the path; the CLI prints it and exits with code 2.
"""

from rayseg.config.fields import ConfigError, in_ray_job, output_location
from rayseg.config.loader import (URI_KEYS, config_from_dict, explain, explain_sections, load_config,
                                  parse_override, read_yaml, save_config, set_dotted, validate)
from rayseg.config.sections import (ClassifierSection, Config, DataSection, DenseCLSection, EvalSection,
                                    ExplainerSection, LabelSection, MDPSection, MlflowSection, ModelSection,
                                    OptimSection, PixConSection, PredictSection, PSSLSection, RunSection, SSASection,
                                    TrainSection, ViewsSection)

__all__ = ["ClassifierSection", "Config", "ConfigError", "DataSection", "DenseCLSection", "EvalSection",
           "ExplainerSection", "LabelSection", "MDPSection", "MlflowSection", "ModelSection", "OptimSection",
           "PSSLSection", "PixConSection", "PredictSection", "RunSection", "SSASection", "TrainSection", "URI_KEYS",
           "ViewsSection", "config_from_dict", "explain", "explain_sections", "in_ray_job", "load_config",
           "output_location", "parse_override", "read_yaml", "save_config", "set_dotted", "validate"]
