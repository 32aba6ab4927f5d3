"""Datasets by name, training corpora and the prompt sets bundled with saesteer."""

from saesteer.data.corpus import Document, corpus_documents
from saesteer.data.records import Record
from saesteer.data.registry import dataset_names, load_records
from saesteer.data.sources import data_dir, set_data_dir

__all__ = ["Document", "Record", "corpus_documents", "data_dir", "dataset_names", "load_records",
           "set_data_dir"]
