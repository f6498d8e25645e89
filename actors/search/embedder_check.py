"""How well an index's embedding model matches meaning, measured once when the index is built.

A random or untrained encoder gives vectors that say nothing about the text; fused with BM25 they push
noise above exact matches. So the index job asks the model a fixed probe: questions in English and, for
each, the passage that answers it in another language, sharing no word with it (only meaning can pair
them). ``top1`` is the share of questions whose own passage is the nearest of all the probe's passages:
a real multilingual encoder gets nearly all, a random one about one in ``len(PROBE)``. The result is
recorded with the index version; hybrid search gives the semantic side weight only when ``top1``
reaches TRUSTED_TOP1, and otherwise ranks by words alone and says so in every result.
"""
from __future__ import annotations

from typing import Any, Optional

import numpy as np

from corpusflow.actors.engines.embed import Embedder

PROBE = [
    ("When should I take the tablet?", "Nehmen Sie die Tablette jeden Morgen mit einem Glas Wasser ein."),
    ("Where are the samples kept?", "Las muestras se guardan en el congelador a muy baja temperatura."),
    ("Who approves the release of a batch?", "La personne qualifiée libère le lot après examen des dossiers."),
    ("What did the patient complain about?", "Il paziente ha riferito un leggero mal di testa dopo la seconda dose."),
    ("How often is blood pressure measured?", "A pressão arterial foi medida em todas as consultas do estudo."),
    ("What do operators wear?", "De medewerkers dragen altijd een schort en handschoenen."),
    ("Why was a vial rejected?", "Eine Ampulle wurde wegen eines gesprungenen Halses bei der Sichtprüfung aussortiert."),
    ("When are the results expected?", "Esperamos los resultados finales antes del fin de la próxima semana."),
    ("Where is the filling line?", "Cette salle abrite la ligne de remplissage des flacons stériles."),
    ("What does each tube carry?", "Ogni provetta porta un codice a barre e la data del prelievo."),
]
# Below this share of questions matched to their own passage, the semantic side is not used in hybrid ranking.
TRUSTED_TOP1 = 0.6


def measure(embedder: Embedder) -> dict[str, Any]:
    """The probe's result: pairs, top1 (share matched), chance (1/pairs) and whether semantic ranking is trusted."""
    queries = embedder.queries([q for q, _ in PROBE])
    passages = embedder.passages([p for _, p in PROBE])
    top1 = float(np.mean(np.argmax(queries @ passages.T, axis=1) == np.arange(len(PROBE))))
    return {"probe_pairs": len(PROBE), "top1": round(top1, 3), "chance": round(1 / len(PROBE), 3),
            "trusted": top1 >= TRUSTED_TOP1}


def untrusted_notice(check: Optional[dict[str, Any]], source: str) -> str:
    """What a result header says when the index's embedder failed the probe (None: an index written before the
    probe, by a random model)."""
    measured = (f"matched {check['top1']:.0%} of {check['probe_pairs']} probe questions to their answers (chance "
                f"{check['chance']:.0%})" if check else "is a random model")
    return (f"the index's embedder {source} {measured}: its vectors are noise, so hits are ranked by words alone "
            "(BM25); re-index with a real embedder, e.g. corpusflow index OUT --models small-real")
