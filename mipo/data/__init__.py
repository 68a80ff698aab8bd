"""Preference data: formats, tokenisation, collation, the built-in task.

Pipeline: :func:`validate_dataset` (or :func:`load_records`: any supported file,
folder, data set object, hub name or ``builtin:...``, checked whole) ->
:func:`train_eval_split` -> :func:`encode_record` (chat template, EOS,
truncation) -> :func:`collate` (padded tensors for the trainer).
"""

from mipo.data.builtin import gold_reward as gold_reward
from mipo.data.collate import IGNORE_INDEX as IGNORE_INDEX
from mipo.data.collate import PairTensors as PairTensors
from mipo.data.collate import SequenceTensors as SequenceTensors
from mipo.data.collate import collate as collate
from mipo.data.columns import missing_column_hint as missing_column_hint
from mipo.data.columns import parse_column_map as parse_column_map
from mipo.data.columns import required_columns as required_columns
from mipo.data.errors import DataError as DataError
from mipo.data.errors import DataWarning as DataWarning
from mipo.data.load import LoadedDataset as LoadedDataset
from mipo.data.load import load_records as load_records
from mipo.data.load import read_dataset as read_dataset
from mipo.data.records import PreferenceRecord as PreferenceRecord
from mipo.data.split import train_eval_split as train_eval_split
from mipo.data.tiny_tokenizer import tiny_chat_tokenizer as tiny_chat_tokenizer
from mipo.data.tokenize import EncodedPair as EncodedPair
from mipo.data.tokenize import encode_record as encode_record
from mipo.data.validate import validate_dataset as validate_dataset
