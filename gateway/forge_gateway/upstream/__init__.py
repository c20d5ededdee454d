"""Remote experts: the pooled upstream client (``pool``), its hand-written HTTP/1.1 client
(``client``), replica choice and health (``replicas``) and endpoint address checks
(``endpoints``). No web framework here: replies are bytes; the API layer makes responses.
"""
