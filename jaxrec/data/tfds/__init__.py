"""TensorFlow-Datasets builders for jaxrec's CTR datasets (array_record, no TensorFlow needed).

See :mod:`jaxrec.data.tfds.builder` for building and :mod:`jaxrec.data.tfds.source` for training
from a built dataset.
"""

from jaxrec.data.tfds.builder import CTRBuilder, CTRConfig
from jaxrec.data.tfds.rows import RowLayout
from jaxrec.data.tfds.source import (TFDSSource, schema_from_info, source_from_builder,
                                     state_from_info)
from jaxrec.data.tfds.builders import (AvazuBuilder, CriteoBuilder, FrappeBuilder, LibFFMBuilder,
                                       MovieLensBuilder)
from jaxrec.data.tfds.fashion_mnist import FashionMNISTBuilder
