"""bert_mini: a small, readable BERT in plain PyTorch, compatible with Hugging Face BERT checkpoints.

    from bert_mini import load_pretrained, load_tokenizer
    tok = load_tokenizer("minilm-l6")
    model = load_pretrained("minilm-l6").eval()
    batch = tok.pad(tok.encode_batch(["A man is eating."], ["Someone eats."]))
    out = model(**batch)  # out.last_hidden_state (B, T, H), out.pooler_output (B, H)

bert_mini knows nothing about knowledge distillation; `pea_kd` builds on it.
"""
from .checkpoint_files import LoadReport
from .config import BertConfig
from .loading import load_pretrained, load_tokenizer, save_pretrained
from .model_dirs import resolve_model_dir
from .modeling import BertForSequenceClassification, BertModel, BertOutput
from .tokenization import BertTokenizer, Encoding

__all__ = [
    "BertConfig", "BertModel", "BertForSequenceClassification", "BertOutput", "BertTokenizer", "Encoding",
    "LoadReport", "load_pretrained", "load_tokenizer", "resolve_model_dir", "save_pretrained",
]
